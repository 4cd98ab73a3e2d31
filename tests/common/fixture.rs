//! The recipe both VM tests build on the Debian fixture base (made by
//! tests/fixtures/debian-base.sh in HEARTH_FIXTURE_DIR): real `hello` and
//! `less` packages, an OCI image, hearth's first-boot unit from images/files,
//! plus whatever `extra` TOML the test adds. Inputs are served from loopback.

use std::path::{Path, PathBuf};

use hearth_testsupport::{Behavior, Server};

use super::{Env, sha256_hex};

/// The fixture directory, or None (with a note) when VM tests are off.
pub fn vm_tests_fixture() -> Option<PathBuf> {
    if std::env::var("HEARTH_VM_TESTS").as_deref() != Ok("1") {
        eprintln!("SKIPPED: VM tests run with HEARTH_VM_TESTS=1 (tests/ci.sh sets it)");
        return None;
    }
    Some(PathBuf::from(std::env::var("HEARTH_FIXTURE_DIR").expect("HEARTH_FIXTURE_DIR names the fixture directory")))
}

fn serve_file(srv: &Server, path: &Path) -> (String, String) {
    let bytes = std::fs::read(path).unwrap();
    let sha = sha256_hex(&bytes);
    let route = format!("/{}", path.file_name().unwrap().to_string_lossy());
    srv.serve(&route, bytes, Behavior::Normal);
    (srv.url(&route), sha)
}

fn one_deb(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}*.deb in {}", dir.display()))
}

/// The recipe written, and the OCI reference its image carries.
pub struct FixtureRecipe {
    pub recipe: PathBuf,
    pub image_ref: String,
}

/// Writes the fixture recipe into `env`'s `recipe/` directory, serving its
/// inputs from `srv`.
pub fn write_fixture_recipe(env: &Env, srv: &Server, fixture: &Path, extra: &str) -> FixtureRecipe {
    let (base_url, base_sha) = serve_file(srv, &fixture.join("debian-12-base.qcow2"));
    let (hello_url, hello_sha) = serve_file(srv, &one_deb(&fixture.join("debs"), "hello_"));
    let (less_url, less_sha) = serve_file(srv, &one_deb(&fixture.join("debs"), "less_"));
    let fx_image = super::oci::fixture();
    let image_ref = super::oci::serve_image(srv, &fx_image, "test/img", "1.0");
    let dir = env.path("recipe");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let images_files = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/files");
    for f in ["hearth-firstboot", "hearth-firstboot.service", "hearth-platform"] {
        std::fs::copy(images_files.join(f), dir.join("files").join(f)).unwrap();
    }
    let recipe = dir.join("fixture.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"name = "debian-fixture"
[output]
virtual_size = "3GiB"
headroom = "256MiB"
epoch = 1700000000
[base]
name = "debian-12-base.qcow2"
urls = ["{base_url}"]
sha256 = "{base_sha}"
format = "qcow2"
[[debs]]
name = "hello"
urls = ["{hello_url}"]
sha256 = "{hello_sha}"
[[debs]]
name = "less"
urls = ["{less_url}"]
sha256 = "{less_sha}"
[[files]]
path = "/usr/local/lib/hearth/firstboot"
source = "files/hearth-firstboot"
mode = "0755"
[[files]]
path = "/usr/local/lib/hearth/platform"
source = "files/hearth-platform"
mode = "0755"
[[files]]
path = "/etc/systemd/system/hearth-firstboot.service"
source = "files/hearth-firstboot.service"
[[files]]
path = "/etc/systemd/system/multi-user.target.wants/hearth-firstboot.service"
symlink = "/etc/systemd/system/hearth-firstboot.service"
[[images]]
reference = "{image_ref}"
digest = "{image_digest}"
{extra}"#,
            image_digest = fx_image.index
        ),
    )
    .unwrap();
    FixtureRecipe { recipe, image_ref }
}

/// First-boot lines (`hearth-firstboot: stage ...`, `... done`) with the time
/// each was first seen, kept across looks at a growing console log.
#[derive(Default)]
pub struct Stages(pub Vec<(String, f64)>);

impl Stages {
    pub fn see(&mut self, log: &str, t: f64) {
        for line in log.lines() {
            let Some(i) = line.find("hearth-firstboot: ") else { continue };
            let rest = line[i..].trim_end();
            let wanted = rest.contains(": stage ")
                || rest.ends_with(": done")
                || rest.ends_with(": joined")
                || rest.contains(": error");
            if wanted && !self.0.iter().any(|(l, _)| l == rest) {
                self.0.push((rest.to_owned(), t));
            }
        }
    }
}
