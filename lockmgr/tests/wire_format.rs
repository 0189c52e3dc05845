//! The bytes on the wire and on the volume, pinned.
//!
//! postcard encodes fields and variants by position, not by name, so fields
//! may be renamed freely but never reordered, and enums only gain variants
//! at the end. These are the exact encodings of one message of each kind
//! that carries a partition's or a named lease's epoch; a change of any of
//! them is a protocol (or on-volume format) change, not a refactor.

use std::collections::BTreeMap;

use sharedisk_lockmgr::core::{
    ClusterMap, ErrorCode, Handover, HandoverCause, Holder, LockmgrStatus, MapServer, PartitionStatus, Persisted, Request, Response,
    SessionId, StandbyLag, StandbyLagStatus, Status,
};
use sharedisk_lockmgr::wire::{ClientMsg, Push, ServerMsg};

fn hex<T: serde::Serialize>(v: &T) -> String {
    postcard::to_stdvec(v).unwrap().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn client_messages_keep_their_bytes() {
    let release = ClientMsg::Call { id: 7, request: Request::Release { session: SessionId(3), partition: 5, epoch: 300 } };
    assert_eq!(hex(&release), "0107020305ac02");
    let lag = StandbyLag { partition: 2, synced: false, lag_bytes: 0, stale_ms: 1 };
    let report = ClientMsg::Call { id: 7, request: Request::StandbyReport { session: SessionId(3), standbys: vec![lag] } };
    assert_eq!(hex(&report), "01070a030102000001");
    let served = ClientMsg::Call { id: 7, request: Request::Served { session: SessionId(3), partition: 5, epoch: 300 } };
    assert_eq!(hex(&served), "01070b0305ac02");
    let proof = ClientMsg::Proof { nonce: [1; 32], mac: [2; 32] };
    assert_eq!(hex(&proof), format!("03{}{}", "01".repeat(32), "02".repeat(32)));
}

#[test]
fn server_messages_keep_their_bytes() {
    let named = ServerMsg::Reply { id: 8, response: Response::NamedGranted { epoch: 1025 } };
    assert_eq!(hex(&named), "0108038108");
    let stale = ServerMsg::Reply { id: 9, response: Response::Error { code: ErrorCode::StaleEpoch, message: "m".into() } };
    assert_eq!(hex(&stale), "01090604016d");
    let grant = ServerMsg::Push(Push::Grant { partition: 2, epoch: 70000 });
    assert_eq!(hex(&grant), "030002f0a204");
    let map = ClusterMap {
        servers: vec![MapServer { id: "a".into(), addr: "x:1".into() }],
        owners: vec![Some(0), None],
        tokens: vec![4, 5],
        standbys: vec![None, Some(0)],
    };
    assert_eq!(hex(&ServerMsg::Push(Push::Map(map))), "030301016103783a310201000002040502000100");
    let partition = PartitionStatus {
        id: 1,
        owner: Some("a".into()),
        fence_token: 9,
        slots: [0, 8191],
        state: "owned".into(),
        standby: Some("b".into()),
        standby_lag: Some(StandbyLagStatus { synced: true, lag_bytes: 300, stale_ms: 5, reported_ms_ago: 20 }),
    };
    let lockmgr = LockmgrStatus { seat: 1, addr: "y:2".into(), pid: 300, active: true, term: 7, alive: true };
    let handover = Handover {
        partition: 3,
        cause: HandoverCause::ConnectionClosed,
        from: Some("a".into()),
        to: Some("b".into()),
        epoch: Some(4),
        start_ms: 100,
        fenced_ms: Some(101),
        released_ms: None,
        granted_ms: Some(102),
        served_ms: Some(104),
    };
    let status = ServerMsg::Status {
        id: 10,
        status: Status { servers: vec![], partitions: vec![partition], lockmgrs: vec![lockmgr], handovers: vec![handover], now_ms: 200 },
    };
    assert_eq!(
        hex(&status),
        "020a0001010101610900ff3f056f776e65640101620101ac020514010103793a32ac0201070101030001016101016201046401650001660168c801"
    );
    let standby = ServerMsg::NotActive { active: Some("x:1".into()) };
    assert_eq!(hex(&standby), "050103783a31");
    let challenge = ServerMsg::Challenge { nonce: [3; 32] };
    assert_eq!(hex(&challenge), format!("06{}", "03".repeat(32)));
    let proven = ServerMsg::Proven { mac: [4; 32] };
    assert_eq!(hex(&proven), format!("07{}", "04".repeat(32)));
}

#[test]
fn the_persisted_map_keeps_its_bytes() {
    let persisted = Persisted {
        partitions: vec![(Some(Holder::Owner { server: "a".into(), key: 0xa }), 3), (Some(Holder::Fencing { key: 0xb }), 4), (None, 5)],
        named_epoch_marks: BTreeMap::from([("leader".to_owned(), 2048)]),
    };
    assert_eq!(hex(&persisted), "03010001610a0301010b04000501066c65616465728010");
}
