//! What the processes log, through `tracing`: as text (the lines they have
//! always printed, which `up`, tests and operators read) or as JSON, one
//! object per line for a log pipeline (`--log-format json`).
//!
//! Either way informational events go to stdout and warnings and errors to
//! stderr. An event's fields use the metrics' label names (`server`,
//! `partition`, `epoch`, `term`, plus `addr` and `error`), so a log line and
//! a series about the same thing join on the same keys:
//!
//! ```text
//! server s1: claimed partition 3 (epoch 7) ...                     (text)
//! {"timestamp":"…","level":"INFO","message":"server s1: claimed …","server":"s1","partition":3,"epoch":7}
//! ```

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// The message alone, a line per event.
    #[default]
    Text,
    /// A JSON object per line: `timestamp`, `level`, `message` and the fields.
    Json,
}

/// Install the process's subscriber (once; a second call changes nothing).
pub fn init(format: LogFormat) {
    let writer = std::io::stderr.with_max_level(Level::WARN).or_else(std::io::stdout);
    let builder = tracing_subscriber::fmt().with_max_level(Level::INFO).with_writer(writer).with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.event_format(MessageOnly).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).with_target(false).try_init(),
    };
}

/// The text format: an event's message, nothing else (its fields are in
/// the message's words already).
struct MessageOnly;

impl<S, N> FormatEvent<S, N> for MessageOnly
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut message = Message(String::new());
        event.record(&mut message);
        writeln!(writer, "{}", message.0)
    }
}

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}
