//! The tests' fake server as a program, to measure loadgen by hand:
//! `cargo run --release -p loadgen --example fake_server -- [PORT] [store|ok]`
//! then `loadgen --addr 127.0.0.1:PORT --mix delete=1 ...`.

#[path = "../tests/common/fake.rs"]
mod fake;

use std::net::TcpListener;

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or(7070);
    let mode = match args.next().as_deref() {
        Some("ok") => fake::Mode::Fixed(b"OK\r\n".to_vec()),
        _ => fake::Mode::Store,
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("fake_server: cannot listen on 127.0.0.1:{port}: {error}");
            std::process::exit(1);
        }
    };
    let server = fake::FakeServer::start_on(listener, mode, fake::Options::default());
    eprintln!("fake_server: listening on {}", server.address);
    loop {
        std::thread::park();
    }
}
