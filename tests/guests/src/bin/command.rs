//! A wasi:cli command component: valid WebAssembly, wrong world for Gale.

fn main() {
    println!("I am a command, not an HTTP handler");
}
