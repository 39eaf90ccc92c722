//! TCP connection rate for `scripts/bench.sh` (a benchmark helper, not a test).
//!
//! ```text
//! connrate server ADDR:PORT [THREADS]            accept, read the request, answer, close
//! connrate client ADDR:PORT SECONDS [THREADS]    connect, one request, read the answer and
//!                                                the server's close, close; repeat
//! ```
//!
//! The client prints one JSON object: `{"connections", "seconds", "conn_per_s", "errors",
//! "threads"}`. Every connection is a new one: SYN, request, response, FIN from the server
//! first (so TIME_WAIT sits on the server and the client's ephemeral ports are free at once).
//! Request and response are 64 bytes.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

const MSG: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

fn serve_one(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; MSG];
    s.read_exact(&mut buf)?;
    s.write_all(&buf)?;
    Ok(()) // dropped: the server closes first
}

fn server(addr: SocketAddr, threads: usize) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("connrate: bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let l = Arc::clone(&listener);
            thread::spawn(move || loop {
                if let Ok((s, _)) = l.accept() {
                    // A client that gives up mid-way is its own problem; keep serving.
                    let _ = serve_one(s);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    ExitCode::SUCCESS
}

fn one_connection(addr: &SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [b'q'; MSG];
    s.write_all(&buf)?;
    s.read_exact(&mut buf)?;
    // Wait for the server's FIN, so the connection is complete when we count it.
    let mut rest = [0u8; 1];
    if s.read(&mut rest)? != 0 {
        return Err(std::io::Error::other("server sent more than one response"));
    }
    Ok(())
}

fn client(addr: SocketAddr, seconds: f64, threads: usize) -> ExitCode {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            thread::spawn(move || {
                let (mut ok, mut err) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match one_connection(&addr) {
                        Ok(()) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            })
        })
        .collect();
    let (mut ok, mut err) = (0u64, 0u64);
    for w in workers {
        let (o, e) = w.join().unwrap_or((0, 1));
        ok += o;
        err += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    #[expect(
        clippy::cast_precision_loss,
        reason = "connection counts stay far below 2^52"
    )]
    let rate = ok as f64 / elapsed;
    println!(
        "{{\"connections\":{ok},\"seconds\":{elapsed:.3},\"conn_per_s\":{rate:.1},\"errors\":{err},\"threads\":{threads}}}"
    );
    if ok == 0 {
        eprintln!("connrate: no connection completed ({err} errors)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: connrate server ADDR:PORT [THREADS] | connrate client ADDR:PORT SECONDS [THREADS]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addr) = args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return usage();
    };
    let threads = |i: usize| -> Option<usize> {
        args.get(i)
            .map_or(Some(1), |t| t.parse().ok())
            .filter(|&t| (1..=64).contains(&t))
    };
    match args.first().map(String::as_str) {
        Some("server") if args.len() <= 3 => threads(2).map_or_else(usage, |t| server(addr, t)),
        Some("client") if (3..=4).contains(&args.len()) => {
            let Some(secs) = args[2].parse::<f64>().ok().filter(|s| *s > 0.0) else {
                return usage();
            };
            threads(3).map_or_else(usage, |t| client(addr, secs, t))
        }
        _ => usage(),
    }
}
