//! The Shoal hello guest: greets, then stays up printing a heartbeat every 5 seconds.

use std::time::Duration;

fn main() {
    println!("Hello from Shoal!");
    let args: Vec<String> = std::env::args().collect();
    println!("args: {args:?}");
    if let Ok(greeting) = std::env::var("GREETING") {
        println!("GREETING: {greeting}");
    }
    let mut beats: u64 = 0;
    loop {
        std::thread::sleep(Duration::from_secs(5));
        beats += 1;
        println!("heartbeat {beats}");
    }
}
