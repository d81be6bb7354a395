//! Records the commit the binary is built from, for `support version`:
//! `SUPPORT_COMMIT` from the environment when set (a build from a source
//! tarball, a package), else `git rev-parse --short=12 HEAD`, else
//! `unknown`. Rebuilt when HEAD moves.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SUPPORT_COMMIT");
    let commit = std::env::var("SUPPORT_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        // HEAD, the branch it names and the packed refs, as files: a commit
        // or a checkout changes one of them. (A path that does not exist
        // would make cargo run this on every build: left out.)
        let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]).filter(|r| r.starts_with("refs/"));
        let paths = [Some("HEAD".to_string()), branch, Some("packed-refs".to_string())];
        for path in paths.into_iter().flatten().filter_map(|p| git(&["rev-parse", "--git-path", &p])) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!("cargo:rustc-env=SUPPORT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
