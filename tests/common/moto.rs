//! A moto S3 server (PyPI `moto[server]`, installed by `.ci/run`) on an ephemeral loopback
//! port, killed when dropped. Shared by the S3 driver's unit tests (included by path) and
//! the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The server; moto accepts any access key and checks no signatures.
pub struct Moto {
    child: Child,
    /// Where it listens on 127.0.0.1.
    pub port: u16,
}

impl Moto {
    /// Starts one and waits until it listens.
    pub fn start() -> Moto {
        // As a module, not the `moto_server` script: pip may put scripts off the PATH.
        let mut child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the moto S3 server");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        // werkzeug says where it listens once it does: " * Running on http://127.0.0.1:N".
        let port = loop {
            let line = lines
                .next()
                .expect("moto did not start: run .ci/run, or pip install 'moto[server]==5.2.1'")
                .unwrap();
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                break rest.trim().parse().unwrap();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Moto { child, port }
    }

    /// Its endpoint URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates the bucket `name` (an unsigned request, which moto takes).
    pub fn create_bucket(&self, name: &str) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{name} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
            "{out}"
        );
    }

    /// A credentials file in `dir` (TOML, mode 0600) with moto's test keys.
    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let creds = dir.join("s3-credentials.toml");
        std::fs::write(
            &creds,
            "access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        creds
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server shared by the tests running at the same time, started by the first and
/// killed when the last lets go (a static one would outlive the test process).
pub fn shared() -> std::sync::Arc<Moto> {
    static SHARED: std::sync::Mutex<std::sync::Weak<Moto>> =
        std::sync::Mutex::new(std::sync::Weak::new());
    let mut w = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = w.upgrade() {
        return m;
    }
    let m = std::sync::Arc::new(Moto::start());
    *w = std::sync::Arc::downgrade(&m);
    m
}

/// A bucket name no other test uses.
pub fn unique_bucket() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "berth-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
