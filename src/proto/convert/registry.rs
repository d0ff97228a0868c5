//! Registry mappings: events, image inspection, GC, fsck, uploads, repositories.

use time::OffsetDateTime;

use super::{WireError, digest_in, opt, opt_digest_in, time_in, ts};
use crate::events::{Action, Event, Target};
use crate::proto as pb;
use crate::registry::inspect::{ImageInfo, LayerInfo, PlatformEntry};
use crate::registry::{FsckProblem, FsckReport, GcReport, RepoSummary, UploadInfo};

/// An event on the wire.
pub(crate) fn event_out(e: Event) -> pb::RegistryEvent {
    pb::RegistryEvent {
        time: Some(ts(e.time)),
        action: match e.action {
            Action::Push => pb::EventAction::Push,
            Action::Pull => pb::EventAction::Pull,
            Action::Delete => pb::EventAction::Delete,
        }
        .into(),
        target: match e.target {
            Target::Manifest => pb::EventTarget::Manifest,
            Target::Blob => pb::EventTarget::Blob,
            Target::Tag => pb::EventTarget::Tag,
        }
        .into(),
        repository: e.repository,
        digest: e.digest.unwrap_or_default(),
        tag: e.tag.unwrap_or_default(),
        actor: e.actor,
    }
}

/// An event from the wire.
pub(crate) fn event_in(e: pb::RegistryEvent) -> Result<Event, WireError> {
    let action = match pb::EventAction::try_from(e.action) {
        Ok(pb::EventAction::Push) => Action::Push,
        Ok(pb::EventAction::Pull) => Action::Pull,
        Ok(pb::EventAction::Delete) => Action::Delete,
        Ok(pb::EventAction::Unspecified) | Err(_) => {
            return Err(WireError::Unknown {
                what: "event action",
                value: e.action,
            });
        }
    };
    let target = match pb::EventTarget::try_from(e.target) {
        Ok(pb::EventTarget::Manifest) => Target::Manifest,
        Ok(pb::EventTarget::Blob) => Target::Blob,
        Ok(pb::EventTarget::Tag) => Target::Tag,
        Ok(pb::EventTarget::Unspecified) | Err(_) => {
            return Err(WireError::Unknown {
                what: "event target",
                value: e.target,
            });
        }
    };
    Ok(Event {
        time: e.time.map(time_in).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        action,
        target,
        repository: e.repository,
        digest: opt(e.digest),
        tag: opt(e.tag),
        actor: e.actor,
    })
}

/// An inspected image on the wire.
pub(crate) fn image_out(i: ImageInfo) -> pb::InspectImageResponse {
    pb::InspectImageResponse {
        repository: i.repository,
        digest: i.digest.to_string(),
        media_type: i.media_type,
        kind: i.kind,
        manifest_size: i.manifest_size,
        config_digest: i.config_digest.map(|d| d.to_string()).unwrap_or_default(),
        os: i.os.unwrap_or_default(),
        architecture: i.architecture.unwrap_or_default(),
        layers: i
            .layers
            .into_iter()
            .map(|l| pb::Layer {
                digest: l.digest.to_string(),
                size: l.size,
                media_type: l.media_type,
                compression: l.compression,
                diff_id: l.diff_id.map(|d| d.to_string()).unwrap_or_default(),
                config_diff_id: l.config_diff_id.unwrap_or_default(),
                diff_id_matches: l.diff_id_matches,
                chain_id: l.chain_id.map(|d| d.to_string()).unwrap_or_default(),
            })
            .collect(),
        platforms: i
            .platforms
            .into_iter()
            .map(|p| pb::Platform {
                digest: p.digest.to_string(),
                media_type: p.media_type,
                size: p.size,
                os: p.os.unwrap_or_default(),
                architecture: p.architecture.unwrap_or_default(),
                variant: p.variant.unwrap_or_default(),
            })
            .collect(),
        total_size: i.total_size,
    }
}

/// An inspected image from the wire.
pub(crate) fn image_in(i: pb::InspectImageResponse) -> Result<ImageInfo, WireError> {
    let layers = i
        .layers
        .into_iter()
        .map(|l| {
            Ok(LayerInfo {
                digest: digest_in(&l.digest)?,
                size: l.size,
                media_type: l.media_type,
                compression: l.compression,
                diff_id: opt_digest_in(&l.diff_id)?,
                config_diff_id: opt(l.config_diff_id),
                diff_id_matches: l.diff_id_matches,
                chain_id: opt_digest_in(&l.chain_id)?,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let platforms = i
        .platforms
        .into_iter()
        .map(|p| {
            Ok(PlatformEntry {
                digest: digest_in(&p.digest)?,
                media_type: p.media_type,
                size: p.size,
                os: opt(p.os),
                architecture: opt(p.architecture),
                variant: opt(p.variant),
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(ImageInfo {
        repository: i.repository,
        digest: digest_in(&i.digest)?,
        media_type: i.media_type,
        kind: i.kind,
        manifest_size: i.manifest_size,
        config_digest: opt_digest_in(&i.config_digest)?,
        os: opt(i.os),
        architecture: opt(i.architecture),
        layers,
        platforms,
        total_size: i.total_size,
    })
}

/// A GC report on the wire.
pub(crate) fn gc_out(r: GcReport) -> pb::GarbageCollectResponse {
    pb::GarbageCollectResponse {
        dry_run: r.dry_run,
        blobs_deleted: r
            .blobs_deleted
            .into_iter()
            .map(|(digest, size)| pb::BlobRef { digest, size })
            .collect(),
        bytes_freed: r.bytes_freed,
        manifests_deleted: r
            .manifests_deleted
            .into_iter()
            .map(|(repository, digest)| pb::ManifestRef { repository, digest })
            .collect(),
        blobs_in_use: r.blobs_in_use as u64,
        blobs_young: r.blobs_young as u64,
    }
}

/// A GC report from the wire.
pub(crate) fn gc_in(r: pb::GarbageCollectResponse) -> GcReport {
    GcReport {
        dry_run: r.dry_run,
        blobs_deleted: r
            .blobs_deleted
            .into_iter()
            .map(|b| (b.digest, b.size))
            .collect(),
        bytes_freed: r.bytes_freed,
        manifests_deleted: r
            .manifests_deleted
            .into_iter()
            .map(|m| (m.repository, m.digest))
            .collect(),
        blobs_in_use: r.blobs_in_use as usize,
        blobs_young: r.blobs_young as usize,
    }
}

/// An upload session on the wire.
pub(crate) fn upload_out(u: UploadInfo) -> pb::Upload {
    pb::Upload {
        repository: u.repository,
        id: u.id,
        size: u.size,
        started_at: u.started_at.map(ts),
    }
}

/// An upload session from the wire.
pub(crate) fn upload_in(u: pb::Upload) -> UploadInfo {
    UploadInfo {
        repository: u.repository,
        id: u.id,
        size: u.size,
        started_at: u.started_at.map(time_in),
    }
}

/// An fsck report on the wire.
pub(crate) fn fsck_out(r: FsckReport) -> pb::FsckResponse {
    pb::FsckResponse {
        blobs_checked: r.blobs_checked,
        bytes_checked: r.bytes_checked,
        problems: r
            .problems
            .into_iter()
            .map(|p| pb::FsckProblem {
                kind: p.kind,
                path: p.path.display().to_string(),
                digest: p.digest,
                detail: p.detail,
            })
            .collect(),
    }
}

/// An fsck report from the wire.
pub(crate) fn fsck_in(r: pb::FsckResponse) -> FsckReport {
    FsckReport {
        blobs_checked: r.blobs_checked,
        bytes_checked: r.bytes_checked,
        problems: r
            .problems
            .into_iter()
            .map(|p| FsckProblem {
                kind: p.kind,
                path: p.path.into(),
                digest: p.digest,
                detail: p.detail,
            })
            .collect(),
    }
}

/// A repository summary on the wire.
pub(crate) fn repo_out(r: RepoSummary) -> pb::Repository {
    pb::Repository {
        name: r.name,
        tags: r.tags as u32,
        manifests: r.manifests as u32,
        bytes: r.bytes,
    }
}

/// A repository summary from the wire.
pub(crate) fn repo_in(r: pb::Repository) -> RepoSummary {
    RepoSummary {
        name: r.name,
        tags: r.tags as usize,
        manifests: r.manifests as usize,
        bytes: r.bytes,
    }
}

/// A registry policy action by name (`pull`, `push`, `delete`, `list`).
pub(crate) fn policy_action_in(s: &str) -> Result<crate::registry::policy::Action, WireError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        WireError::Invalid {
            what: "policy action",
            value: s.to_string(),
            reason: "expected pull, push, delete or list".into(),
        }
    })
}
