//! Checks that pages of `docs/` stay true to the tests that back them.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn read(path: &str) -> String {
        std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The lines of the page's fenced code blocks.
    fn code_lines(page: &str) -> Vec<&str> {
        let mut inside = false;
        let mut out = Vec::new();
        for line in page.lines() {
            if line.trim_start().starts_with("```") {
                inside = !inside;
            } else if inside {
                out.push(line.trim());
            }
        }
        out
    }

    /// docs/docker.md's commands are the ones the Docker tests run: every option of every
    /// `docker` and `bpfnat up` command it shows (and every network option's value) is
    /// passed by `loader/tests/e2e/docker.rs`, and its daemon.json settings are those the
    /// tests' dockerd runs with.
    #[test]
    fn docker_page_commands_are_the_tests_commands() {
        let page = read("docs/docker.md");
        let tests = read("loader/tests/e2e/docker.rs");
        let fixture = read("loader/tests/support/docker.rs");
        let quoted = |token: &str| {
            tests.contains(&format!("\"{token}\"")) || fixture.contains(&format!("\"{token}\""))
        };
        let mut checked = 0;
        for line in code_lines(&page) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["docker", sub, rest @ ..] => {
                    assert!(quoted(sub), "`{line}`: the tests never run `docker {sub}`");
                    for w in rest {
                        // A bridge's name is the reader's choice; the option is what counts.
                        let w = match w.split_once('=') {
                            Some((key, _)) if key.ends_with(".bridge.name") => key,
                            _ => w,
                        };
                        let option = w.starts_with('-') || w.starts_with("com.docker.");
                        let passed = if w.ends_with(".bridge.name") {
                            tests.contains(&format!("\"{w}="))
                        } else {
                            quoted(w)
                        };
                        assert!(!option || passed, "`{line}`: the tests never pass {w}");
                        checked += 1;
                    }
                }
                ["bpfnat", "up", rest @ ..]
                | ["ExecStart=/usr/local/bin/bpfnat", "up", rest @ ..] => {
                    for w in rest.iter().filter(|w| w.starts_with("--")) {
                        // --docker-host implies --docker: the tests name the daemon.
                        let w = if *w == "--docker" { "--docker-host" } else { w };
                        assert!(quoted(w), "`{line}`: the tests never pass {w}");
                        checked += 1;
                    }
                }
                _ => {}
            }
        }
        assert!(checked >= 15, "only {checked} options checked");

        // daemon.json: every setting but live-restore (per test) is the fixture's.
        let json_start = page.find("```json").expect("a daemon.json block");
        let block = &page[json_start + 7..];
        let block = &block[..block.find("```").expect("end of the json block")];
        let settings: serde_json::Value = serde_json::from_str(block).expect("daemon.json");
        for (key, value) in settings.as_object().expect("an object") {
            if key == "live-restore" {
                assert!(fixture.contains("\\\"live-restore\\\": {live_restore}"));
                continue;
            }
            let setting = format!("\"{key}\": {value}");
            assert!(
                fixture.contains(&setting),
                "daemon.json's {setting} is not the tests' dockerd setting"
            );
        }
    }
}
