//! A toolkit for typed configuration: reading variables from the environment and `.env` ([`Sources`]),
//! typed reads that collect every problem instead of stopping at the first ([`Reader`]), masking secrets
//! wherever a value is shown ([`redact_value`], [`Masked`]) and checking addresses.
//!
//! It knows no setting of its own: each module reads its own settings with a [`Reader`], and
//! [`crate::settings::Config`] puts the whole process's together. Secrets are held in
//! [`secrecy::SecretString`], which cannot be printed by accident.

mod address;
mod reader;
mod redact;
mod source;

pub use address::{check_broker_list, check_host_port, check_url};
pub use reader::{Entry, Problem, Reader, Unit, parse_duration};
pub(crate) use redact::unambiguous_url;
pub use redact::{Masked, Sensitivity, redact_url, redact_value};
pub use source::{Origin, Sources};
