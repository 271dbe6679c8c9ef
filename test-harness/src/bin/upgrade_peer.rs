//! A stand-in for another user's process at the sidecar's upgrade socket,
//! for the end-to-end tests (run as another uid).
//!
//! ```text
//! meshgate-upgrade-peer connect PATH   send `hello` like a new process; print the answer
//! meshgate-upgrade-peer listen PATH    serve PATH like an old process; print what arrived
//! ```
//!
//! Frames are the handover protocol's: a big-endian u32 length, then JSON.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("connect"), Some(path)) => connect(Path::new(path)),
        (Some("listen"), Some(path)) => listen(Path::new(path)),
        _ => Err("usage: meshgate-upgrade-peer connect|listen PATH".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate-upgrade-peer: {e}");
            ExitCode::from(1)
        }
    }
}

fn connect(path: &Path) -> Result<(), String> {
    let mut stream = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let hello = serde_json::json!({ "type": "hello", "protocol": 1, "pid": std::process::id() });
    let body = serde_json::to_vec(&hello).map_err(|e| e.to_string())?;
    let len = u32::try_from(body.len()).map_err(|e| e.to_string())?;
    // A process that refuses us may answer and close before our hello is
    // written; its answer is still in the socket buffer, so read on.
    if let Err(e) = stream
        .write_all(&len.to_be_bytes())
        .and_then(|()| stream.write_all(&body))
    {
        println!("hello not sent: {e}");
    }
    let mut len = [0u8; 4];
    if stream.read_exact(&mut len).is_err() {
        println!("answer: closed");
        return Ok(());
    }
    let mut body = vec![0u8; u32::from_be_bytes(len).min(1 << 20) as usize];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))?;
    println!("answer: {}", answer["type"].as_str().unwrap_or("?"));
    println!("{answer}");
    Ok(())
}

fn listen(path: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| format!("bind: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("listening");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    println!("received {} bytes", received.len());
    Ok(())
}
