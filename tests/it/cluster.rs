//! The cluster harness is `sharedisk_testkit::cluster`; here, what the
//! integration tests add to it: clients of the `redis` crate.

use std::time::Duration;

pub use sharedisk_testkit::cluster::*;

pub async fn client(c: &Cluster) -> redis::cluster_async::ClusterConnection {
    client_via(&c.urls()).await
}

pub async fn client_via(urls: &[String]) -> redis::cluster_async::ClusterConnection {
    let c = redis::cluster::ClusterClient::builder(urls.to_vec())
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    c.get_async_connection().await.expect("cluster connection")
}
