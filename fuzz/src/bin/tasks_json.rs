//! AFL++ target: see [`support_fuzz::tasks_json`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::tasks_json(data));
}
