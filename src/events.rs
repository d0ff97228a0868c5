//! Events (pushes, pulls, deletes) for `berth events` and, later, the audit log. Only the
//! cores emit them, after the operation succeeded, carrying the [`Identity`] that asked, so
//! HTTP and gRPC callers are recorded alike. They travel on a bounded broadcast channel:
//! publishing never waits, and a subscriber that falls behind loses its place and is told
//! so, instead of slowing pushes down.

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::identity::Identity;

/// Events kept for subscribers that are briefly behind.
const BUFFER: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Content was stored (manifest PUT, blob upload finished or mounted).
    Push,
    /// Content was served (GET; HEAD is not counted).
    Pull,
    /// Content or a tag was deleted.
    Delete,
}

/// To what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A manifest or index.
    Manifest,
    /// A blob.
    Blob,
    /// A tag only.
    Tag,
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// What happened.
    pub action: Action,
    /// To what.
    pub target: Target,
    /// Repository.
    pub repository: String,
    /// Digest, when one is involved.
    pub digest: Option<String>,
    /// Tag, when one is involved.
    pub tag: Option<String>,
    /// Who asked, as [`Identity`]'s `Display` names it (CN and serial, or uid).
    pub actor: String,
}

/// The publisher; clones share the channel.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BUFFER).0,
        }
    }
}

impl Events {
    /// Publishes an event; with no subscriber it goes nowhere.
    pub(crate) fn emit(
        &self,
        actor: &Identity,
        action: Action,
        target: Target,
        repository: &str,
        digest: Option<String>,
        tag: Option<String>,
    ) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Event {
            time: OffsetDateTime::now_utc(),
            action,
            target,
            repository: repository.to_string(),
            digest,
            tag,
            actor: actor.to_string(),
        });
    }

    /// A new subscription, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
