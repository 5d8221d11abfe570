//! gtstore-sim: runs whole simulated clusters from seeds and checks them.
//! Thin main over `gtstore::sim`; see gtstore-sim(1).

use std::time::Instant;

use gtstore::cli::{EX_OK, EX_SOFTWARE, EX_USAGE};
use gtstore::sim;

const USAGE: &str = "usage: gtstore-sim [--seeds N] [--first S] [--seed S] [--trace] [--quiet] [--selftest]";

fn main() {
    // A Unix filter: a closed pipe (`| head`) ends the program quietly.
    // SAFETY: SIG_DFL installs no Rust code as a handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    std::process::exit(run());
}

fn run() -> i32 {
    let mut opts = getopts::Options::new();
    opts.optopt("n", "seeds", "how many seeds to run (default 200)", "N");
    opts.optopt("f", "first", "the first seed of the range (default 1)", "S");
    opts.optopt("s", "seed", "run this one seed (a replay)", "S");
    opts.optflag("t", "trace", "print the whole trace of each seed (failing seeds: instead of an excerpt)");
    opts.optflag("q", "quiet", "print only failures and the summary line");
    opts.optflag("", "selftest", "run the seeds once per planted bug (build with --features planted-bugs)");
    opts.optflag("h", "help", "print this help");
    opts.optflag("V", "version", "print the version");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("gtstore-sim: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    if m.opt_present("help") {
        print!("{}", opts.usage(USAGE));
        return EX_OK;
    }
    if m.opt_present("version") {
        println!("gtstore-sim {}", env!("CARGO_PKG_VERSION"));
        return EX_OK;
    }
    let num = |name: &str, default: u64| -> Result<u64, String> {
        match m.opt_str(name) {
            None => Ok(default),
            Some(s) => s.parse::<u64>().map_err(|_| format!("--{name} {s:?}: not a number")),
        }
    };
    let parsed = (|| Ok::<_, String>((num("seeds", 200)?, num("first", 1)?, m.opt_str("seed"))))();
    let (count, first, one) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("gtstore-sim: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    let seeds: Vec<u64> = match one {
        Some(s) => match s.parse::<u64>() {
            Ok(s) => vec![s],
            Err(_) => {
                eprintln!("gtstore-sim: --seed {s:?}: not a number\n{USAGE}");
                return EX_USAGE;
            }
        },
        None => (first..first.saturating_add(count)).collect(),
    };
    if m.opt_present("selftest") {
        return selftest(&seeds);
    }
    let (full_trace, quiet) = (m.opt_present("trace") || seeds.len() == 1, m.opt_present("quiet"));
    let started = Instant::now();
    let (mut failed, mut faults, mut ops) = (Vec::new(), 0usize, 0usize);
    for &seed in &seeds {
        let r = sim::run_seed(seed);
        faults += r.faults;
        ops += r.ops;
        if r.failures.is_empty() {
            if !quiet {
                println!("seed {seed}: ok ({}; {} faults, {} ops)", r.summary, r.faults, r.ops);
            }
            if m.opt_present("trace") {
                r.trace.iter().for_each(|l| println!("    | {l}"));
            }
            continue;
        }
        println!("seed {seed}: FAILED ({})", r.summary);
        for f in &r.failures {
            println!("  {f}");
        }
        let lines: Vec<&str> =
            if full_trace { r.trace.iter().map(String::as_str).collect() } else { sim::relevant_trace(&r) };
        for l in lines.iter().rev().take(if full_trace { usize::MAX } else { 40 }).rev() {
            println!("    | {l}");
        }
        failed.push(seed);
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{} seeds in {secs:.1} s ({:.0} seeds/min), {faults} faults, {ops} client operations",
        seeds.len(),
        seeds.len() as f64 * 60.0 / secs
    );
    println!("sim: {} seeds, {} failed", seeds.len(), failed.len());
    for s in &failed {
        println!("replay: target/release/gtstore-sim --seed {s} --trace");
    }
    if failed.is_empty() {
        EX_OK
    } else {
        EX_SOFTWARE
    }
}

/// Runs `seeds` with each planted bug in turn until a seed fails.
fn selftest(seeds: &[u64]) -> i32 {
    if !cfg!(feature = "planted-bugs") {
        eprintln!("gtstore-sim: --selftest needs a build with --features planted-bugs (make sim-selftest)");
        return EX_USAGE;
    }
    // Only a seed that passes without bugs can show that a bug is caught.
    gtstore::bugs::plant(None);
    let clean: Vec<u64> = seeds.iter().copied().filter(|&s| sim::run_seed(s).failures.is_empty()).collect();
    println!("{} of {} seeds pass without planted bugs", clean.len(), seeds.len());
    let mut caught = 0;
    for bug in gtstore::bugs::ALL {
        gtstore::bugs::plant(Some(bug));
        let found = clean.iter().find_map(|&s| {
            let r = sim::run_seed(s);
            r.failures.first().map(|f| (s, f.clone()))
        });
        match found {
            Some((seed, why)) => {
                caught += 1;
                println!("{bug:?}: caught by seed {seed}: {why}");
            }
            None => println!("{bug:?}: NOT caught in {} seeds", clean.len()),
        }
    }
    gtstore::bugs::plant(None);
    let all = gtstore::bugs::ALL.len();
    println!("selftest: {caught} of {all} planted bugs caught");
    if caught == all {
        EX_OK
    } else {
        EX_SOFTWARE
    }
}
