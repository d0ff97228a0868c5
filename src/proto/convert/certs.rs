//! certs.d installer mappings: planned file actions and installed entries.

use std::path::{Path, PathBuf};

use super::{WireError, time_in, ts};
use crate::certsd::{self, ActionKind, CertFile, Entry, FileAction, InstallOutcome, Root};
use crate::proto as pb;

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Planned or done file actions on the wire.
pub(crate) fn actions_out(a: &[certsd::FileAction]) -> Vec<pb::FileAction> {
    a.iter()
        .map(|a| pb::FileAction {
            kind: match a.kind {
                ActionKind::CreateDir => pb::FileActionKind::CreateDir,
                ActionKind::Create => pb::FileActionKind::Create,
                ActionKind::Replace => pb::FileActionKind::Replace,
                ActionKind::Unchanged => pb::FileActionKind::Unchanged,
                ActionKind::Delete => pb::FileActionKind::Delete,
                ActionKind::KeepModified => pb::FileActionKind::KeepModified,
                ActionKind::DeleteDir => pb::FileActionKind::DeleteDir,
            }
            .into(),
            path: path(&a.path),
            mode: a.mode,
        })
        .collect()
}

/// An installed entry on the wire.
pub(crate) fn entry_out(e: &certsd::Entry) -> pb::CertsEntry {
    let file = |f: &certsd::CertFile| pb::CertFileState {
        path: path(&f.path),
        subject: f.subject.clone(),
        not_after: f.not_after.map(ts),
        berth_ca: f.berth_ca,
    };
    pb::CertsEntry {
        root: match e.root {
            Root::Docker => pb::CertsRoot::Docker,
            Root::Containers => pb::CertsRoot::Containers,
            Root::Containerd => pb::CertsRoot::Containerd,
        }
        .into(),
        host: e.host.clone(),
        directory: path(&e.directory),
        managed: e.managed,
        cas: e.cas.iter().map(file).collect(),
        clients: e.clients.iter().map(file).collect(),
        problems: e.problems.clone(),
    }
}

/// File actions from the wire.
pub(crate) fn actions_in(a: Vec<pb::FileAction>) -> Result<Vec<FileAction>, WireError> {
    a.into_iter()
        .map(|a| {
            let kind = match pb::FileActionKind::try_from(a.kind) {
                Ok(pb::FileActionKind::CreateDir) => ActionKind::CreateDir,
                Ok(pb::FileActionKind::Create) => ActionKind::Create,
                Ok(pb::FileActionKind::Replace) => ActionKind::Replace,
                Ok(pb::FileActionKind::Unchanged) => ActionKind::Unchanged,
                Ok(pb::FileActionKind::Delete) => ActionKind::Delete,
                Ok(pb::FileActionKind::KeepModified) => ActionKind::KeepModified,
                Ok(pb::FileActionKind::DeleteDir) => ActionKind::DeleteDir,
                Ok(pb::FileActionKind::Unspecified) | Err(_) => {
                    return Err(WireError::Unknown {
                        what: "file action",
                        value: a.kind,
                    });
                }
            };
            Ok(FileAction {
                kind,
                path: PathBuf::from(a.path),
                mode: a.mode,
            })
        })
        .collect()
}

/// An installed entry from the wire.
pub(crate) fn entry_in(e: pb::CertsEntry) -> Result<Entry, WireError> {
    let file = |f: pb::CertFileState| CertFile {
        path: PathBuf::from(f.path),
        subject: f.subject,
        not_after: f.not_after.map(time_in),
        berth_ca: f.berth_ca,
    };
    let root = match pb::CertsRoot::try_from(e.root) {
        Ok(pb::CertsRoot::Docker) => Root::Docker,
        Ok(pb::CertsRoot::Containers) => Root::Containers,
        Ok(pb::CertsRoot::Containerd) => Root::Containerd,
        Ok(pb::CertsRoot::Unspecified) | Err(_) => {
            return Err(WireError::Unknown {
                what: "certs.d root",
                value: e.root,
            });
        }
    };
    Ok(Entry {
        root,
        host: e.host,
        directory: PathBuf::from(e.directory),
        managed: e.managed,
        cas: e.cas.into_iter().map(file).collect(),
        clients: e.clients.into_iter().map(file).collect(),
        problems: e.problems,
    })
}

/// What an install did, on the wire.
pub(crate) fn install_out(o: InstallOutcome) -> pb::InstallCertsResponse {
    pb::InstallCertsResponse {
        actions: actions_out(&o.actions),
        client_serial: o.client_serial.unwrap_or_default(),
        issued_client: o.issued_client,
        directories: o.directories.iter().map(|d| path(d)).collect(),
        warnings: o.warnings,
        notes: o.notes,
    }
}

/// What an install did, from the wire.
pub(crate) fn install_in(r: pb::InstallCertsResponse) -> Result<InstallOutcome, WireError> {
    Ok(InstallOutcome {
        actions: actions_in(r.actions)?,
        client_serial: (!r.client_serial.is_empty()).then_some(r.client_serial),
        issued_client: r.issued_client,
        directories: r.directories.into_iter().map(PathBuf::from).collect(),
        warnings: r.warnings,
        notes: r.notes,
    })
}
