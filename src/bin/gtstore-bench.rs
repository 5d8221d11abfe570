//! `gtstore-bench`: the benchmark tool (SPEC section 10, `gtstore-bench(1)`); the work is in
//! [`gtstore::bench`].

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match gtstore::bench::main(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => gtstore::cli::die("gtstore-bench", e),
    }
}
