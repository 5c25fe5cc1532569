//! Writes `crds/*.yaml` from the Rust types, or with `--check` fails when they differ.
//!
//!     cargo run -p portcullis-operator --bin crdgen            # regenerate
//!     cargo run -p portcullis-operator --bin crdgen -- --check # CI drift check

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--dir" => match args.next() {
                Some(d) => dir = PathBuf::from(d),
                None => return usage("--dir needs a directory"),
            },
            "-h" | "--help" => {
                println!(
                    "usage: crdgen [--check] [--dir DIR]\nWrites the Portcullis CRDs to DIR (default: crds/ of the repository); --check compares instead."
                );
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    match run(&dir, check) {
        Ok(stale) if stale.is_empty() => ExitCode::SUCCESS,
        Ok(stale) => {
            eprintln!(
                "error: {} out of date with operator/src/crd: {}; run `cargo run -p portcullis-operator --bin crdgen`",
                dir.display(),
                stale.join(", ")
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}\nusage: crdgen [--check] [--dir DIR]");
    ExitCode::from(2)
}

/// Returns the files that differ (in check mode) or writes them.
fn run(dir: &Path, check: bool) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let expected = portcullis_operator::crd::rendered()?;
    let mut stale = Vec::new();
    if !check {
        std::fs::create_dir_all(dir)?;
    }
    for (file, yaml) in &expected {
        let path = dir.join(file);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() != Some(yaml.as_str()) {
            if check {
                stale.push(file.clone());
            } else {
                std::fs::write(&path, yaml)?;
                println!("wrote {}", path.display());
            }
        }
    }
    // A CRD file whose type is gone is drift too.
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && !expected.iter().any(|(f, _)| *f == name) {
                if check {
                    stale.push(format!("{name} (no such type)"));
                } else {
                    std::fs::remove_file(dir.join(&name))?;
                    println!("removed {name}");
                }
            }
        }
    }
    Ok(stale)
}
