//! Serving the registry over rustls. The handshake runs first, with a client certificate
//! required by the config the daemon builds (berth CA + CRL): a client without one never
//! reaches HTTP. The verified certificate becomes a [`ClientIdentity`] on every request of
//! the connection. HTTP/1.1 and HTTP/2 are both served (ALPN).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::ClientIdentity;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until `stop` turns true, handshaking each with the
/// current config in `tls` (swapped on renewal or revocation; new connections see it).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<ServerConfig>>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "registry accept failed");
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(tls.load_full());
                let app = app.clone();
                conns.spawn(connection(acceptor, tcp, peer, app));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    tracing::debug!(addr = ?local, "registry listener stopped");
    conns.shutdown().await;
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "registry refused a TLS client");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "registry TLS handshake timed out");
            return;
        }
    };
    let Some(id) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| identity(leaf.as_ref()))
    else {
        tracing::warn!(%peer, "registry connection without a readable client certificate");
        return;
    };
    tracing::debug!(%peer, client = %id.common_name, serial = %id.serial, "registry client connected");
    let svc = app.map_request(move |mut r: Request<Incoming>| {
        r.extensions_mut().insert(id.clone());
        r
    });
    let served = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "registry connection ended with an error");
    }
}

/// The identity in a verified client certificate.
pub fn identity(der: &[u8]) -> Option<ClientIdentity> {
    let d = crate::pki::inspect_standalone(der)
        .ok()?
        .into_iter()
        .next()?;
    let n = &d.names;
    let mut sans: Vec<String> = n.dns_names.iter().map(|x| format!("DNS:{x}")).collect();
    sans.extend(n.ip_addresses.iter().map(|x| format!("IP:{x}")));
    sans.extend(n.uris.iter().map(|x| format!("URI:{x}")));
    sans.extend(n.emails.iter().map(|x| format!("email:{x}")));
    Some(ClientIdentity {
        common_name: n.common_name.clone(),
        sans,
        serial: d.serial,
    })
}
