//! Thousands of simulated charge nights through the real engine core, with faults, restarts
//! and clock jumps drawn from one seed, and the invariants checked after every step.
//!
//! ```sh
//! cargo run --release --example nights -- --nights 10000 --seed 1
//! cargo run --release --example nights -- --replay 1234567890     # one night, with its trace
//! cargo run --release --example nights -- --nights 10000 --sabotage ignore-cutoff
//! ```
//!
//! Exits 1 when a rule was broken (or, with `--sabotage`, when none was caught).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use solar_charging_backend::domain::session::Sabotage;
use solar_charging_backend::sim::nights::{self, NightResult};

#[derive(Parser)]
#[command(about = "Simulated charge nights through the engine core, checked step by step")]
struct Args {
    /// How many nights.
    #[arg(long, default_value_t = 1000)]
    nights: u64,
    /// Seeds the whole batch.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Switch one safety rule off, to see the checks catch it.
    #[arg(long, value_parser = sabotage_names())]
    sabotage: Option<String>,
    /// Replay one night (its seed as printed) with its step-by-step trace.
    #[arg(long)]
    replay: Option<u64>,
}

/// The sabotages by name, for `--help` and for refusing any other.
fn sabotage_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Sabotage::ALL.map(Sabotage::name))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sabotage = match args.sabotage.as_deref() {
        None => Sabotage::None,
        Some(name) => Sabotage::parse(name).expect("clap admits only the names of Sabotage::ALL"),
    };
    if let Some(seed) = args.replay {
        let r = nights::run_night(seed, sabotage, true);
        for line in &r.trace {
            println!("{line}");
        }
        report(&r, sabotage);
        return if r.violation.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let began = Instant::now();
    let sum = nights::run(args.nights, args.seed, sabotage);
    let rate = sum.nights as f64 / began.elapsed().as_secs_f64();
    println!(
        "nights: {}, seed: {}, charges: {}, faults: {}, violations: {}, nights/s: {:.0}",
        sum.nights, args.seed, sum.charges, sum.faults, sum.violations, rate
    );
    if let Some(first) = &sum.first {
        report(first, sabotage);
    }
    let caught = sum.violations > 0;
    match (sabotage, caught) {
        (Sabotage::None, false) | (_, true) if sabotage == Sabotage::None || caught => {
            if sabotage == Sabotage::None && caught {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            eprintln!("the sabotage {} was not caught", sabotage.name());
            ExitCode::FAILURE
        }
    }
}

fn report(r: &NightResult, sabotage: Sabotage) {
    let Some(v) = &r.violation else { return };
    println!(
        "violation: {} in night {}: {}",
        v.invariant, r.seed, v.detail
    );
    let tail = r.trace.len().saturating_sub(40);
    for line in &r.trace[tail..] {
        println!("  {line}");
    }
    let sab = match sabotage {
        Sabotage::None => String::new(),
        s => format!(" --sabotage {}", s.name()),
    };
    println!(
        "replay: cargo run --release --example nights -- --replay {}{sab}",
        r.seed
    );
}
