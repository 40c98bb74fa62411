//! Checks that the rooms keep their walls (`../shared/STYLE.md`, "The rooms"):
//! the engine stays pure, only grpc knows tonic and prost, and the wire
//! format knows nothing but the engine and serde. It reads the source tree,
//! so it fails the moment a forbidden import lands.

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        if dir.is_file() {
            out.push(dir.to_path_buf());
            return;
        }
        for entry in std::fs::read_dir(dir).expect("source dir is readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Lines of `src/<room>` that name any of `crates` as a path root.
    fn offending_lines(room: &str, crates: &[&str]) -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(room);
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        assert!(
            !files.is_empty(),
            "no sources found under {}",
            dir.display()
        );
        let mut bad = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source is readable");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for krate in crates {
                    let as_use = code.trim_start().starts_with(&format!("use {krate}"));
                    let as_path = code.contains(&format!("{krate}::"));
                    let as_attr = code.contains(&format!("#[{krate}"));
                    if as_use || as_path || as_attr {
                        bad.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        bad
    }

    #[test]
    fn engine_imports_no_io_or_transport_crate() {
        let forbidden = [
            "tokio",
            "tonic",
            "prost",
            "redis",
            "diesel",
            "bb8",
            "tracing",
            "async_trait",
        ];
        let bad = offending_lines("engine", &forbidden);
        assert!(
            bad.is_empty(),
            "src/engine must stay pure, found:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn only_grpc_knows_tonic_and_prost() {
        for room in [
            "engine", "store", "fanout", "timers", "app", "auth", "tls.rs",
        ] {
            let bad = offending_lines(room, &["tonic", "prost", "diesel"]);
            assert!(
                bad.is_empty(),
                "src/{room} must not know tonic/prost/diesel, found:\n{}",
                bad.join("\n")
            );
        }
    }

    #[test]
    fn the_wire_format_knows_only_the_engine_and_serde() {
        let io = [
            "tokio", "tonic", "prost", "redis", "diesel", "bb8", "tracing", "fanout", "audit",
        ];
        let bad = offending_lines("wire.rs", &io);
        assert!(
            bad.is_empty(),
            "src/wire.rs must stay I/O-free, found:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn the_check_catches_a_forbidden_import() {
        // The scanner itself must be able to fail: it sees grpc's tonic imports.
        assert!(!offending_lines("grpc", &["tonic"]).is_empty());
    }
}
