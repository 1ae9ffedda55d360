//! Test guest for the Wasm runtime: behaviour chosen by argv[1].
//!
//! `exit N`, `loop`, `spin MILLIS`, `trap`, `print TEXT`, `ls PATH`, `env`, `alloc MB`, `sleep SECS`.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let command = args.get(1).map(String::as_str).unwrap_or("");
    let operand = args.get(2).map(String::as_str).unwrap_or("");
    match command {
        "exit" => {
            let code: i32 = operand.parse().unwrap_or(0);
            std::process::exit(code);
        }
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "spin" => {
            // spin MILLIS: busy-loop for that much wall-clock time, print the iterations done.
            let millis: u64 = operand.parse().unwrap_or(100);
            let started = std::time::Instant::now();
            let mut iterations: u64 = 0;
            while started.elapsed() < std::time::Duration::from_millis(millis) {
                for _ in 0..1000 {
                    iterations = std::hint::black_box(iterations + 1);
                }
            }
            println!("{iterations}");
        }
        "trap" => {
            // An explicit trap rather than a panic: the runtime sees `unreachable`.
            std::process::abort();
        }
        "print" => {
            println!("{}", args[2..].join(" "));
            eprintln!("to stderr");
        }
        "args" => {
            for arg in &args {
                println!("{arg}");
            }
        }
        "ls" => match std::fs::read_dir(operand) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    println!("{}", entry.file_name().to_string_lossy());
                }
            }
            Err(e) => println!("error: {e}"),
        },
        "write" => {
            // write PATH TEXT
            let text = args.get(3).map(String::as_str).unwrap_or("");
            match std::fs::write(operand, text) {
                Ok(()) => println!("written"),
                Err(e) => println!("error: {e}"),
            }
        }
        "env" => {
            for (key, value) in std::env::vars() {
                println!("{key}={value}");
            }
        }
        // alloc MIB: allocate and touch that much, then end; hold MIB: and then keep it.
        "alloc" | "hold" => {
            let mib: usize = operand.parse().unwrap_or(1);
            let mut blocks = Vec::new();
            for i in 0..mib {
                let mut block = vec![0u8; 1 << 20];
                for byte in block.iter_mut().step_by(4096) {
                    *byte = i as u8;
                }
                blocks.push(block);
            }
            println!("allocated {} MiB", blocks.len());
            if command == "hold" {
                let _ = std::io::stdout().flush();
                std::thread::sleep(std::time::Duration::from_secs(3600));
                drop(blocks);
            }
        }
        "sleep" => {
            let secs: u64 = operand.parse().unwrap_or(1);
            std::thread::sleep(std::time::Duration::from_secs(secs));
            println!("slept");
        }
        other => {
            eprintln!("unknown command {other:?}");
            std::process::exit(2);
        }
    }
    let _ = std::io::stdout().flush();
}
