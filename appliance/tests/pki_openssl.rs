//! The PKI judged by openssl: RSA 2048 CAs, the CA pin equal to what kubeadm's
//! documented openssl pipeline computes, client certificates that verify.

use std::process::{Command, Stdio};

use hearth_appliance::pki::Pki;

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn ca_hash_matches_openssl_and_certificates_verify() {
    if !hearth_testsupport::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path()).unwrap();
    let ca = dir.path().join("pki/ca.crt");
    let ca_s = ca.to_str().unwrap();
    // openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum
    let pubkey = openssl(&["x509", "-in", ca_s, "-pubkey", "-noout"], None);
    let der = openssl(&["pkey", "-pubin", "-outform", "der"], Some(&pubkey));
    let digest = openssl(&["dgst", "-sha256", "-r"], Some(&der));
    let hex = String::from_utf8_lossy(&digest).split_whitespace().next().unwrap().to_owned();
    assert_eq!(pki.ca_cert_hash().unwrap(), format!("sha256:{hex}"));

    let text = String::from_utf8(openssl(&["x509", "-in", ca_s, "-noout", "-text"], None)).unwrap();
    assert!(text.contains("Public-Key: (2048 bit)") && text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Subject: CN = kubernetes") || text.contains("Subject: CN=kubernetes"), "{text}");
    for (rel, cn) in [
        ("pki/front-proxy-ca.crt", "front-proxy-ca"),
        ("pki/etcd/ca.crt", "etcd-ca"),
        ("pki/platform-ca.crt", "hearth platform CA"),
    ] {
        let t = String::from_utf8(openssl(
            &["x509", "-in", dir.path().join(rel).to_str().unwrap(), "-noout", "-subject"],
            None,
        ))
        .unwrap();
        assert!(t.contains(cn), "{t}");
    }
    let sa = String::from_utf8(openssl(
        &["pkey", "-in", dir.path().join("pki/sa.key").to_str().unwrap(), "-noout", "-text"],
        None,
    ))
    .unwrap();
    assert!(sa.contains("2048 bit"), "{sa}");

    let (cert, _key) = pki.client_cert("kubernetes-admin", "system:masters").unwrap();
    let client = dir.path().join("admin.crt");
    std::fs::write(&client, cert).unwrap();
    let verified = openssl(&["verify", "-CAfile", ca_s, client.to_str().unwrap()], None);
    assert!(String::from_utf8_lossy(&verified).contains(": OK"));
}

#[test]
fn state_from_before_the_platform_ca_gets_one_and_keeps_it() {
    if !hearth_testsupport::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::load_or_create(dir.path()).unwrap();
    for f in ["pki/platform-ca.crt", "pki/platform-ca.key"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let upgraded = Pki::load_or_create(dir.path()).unwrap();
    assert_eq!(upgraded.ca.cert_pem, first.ca.cert_pem, "the cluster CA stays");
    assert_ne!(upgraded.platform_ca.cert_pem, first.platform_ca.cert_pem);
    let key = dir.path().join("pki/platform-ca.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let again = Pki::load_or_create(dir.path()).unwrap();
    assert_eq!(again.platform_ca.cert_pem, upgraded.platform_ca.cert_pem, "kept from then on");
    // The key and the certificate belong together.
    let crt = dir.path().join("pki/platform-ca.crt");
    let from_crt = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"], None);
    let from_key = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"], None);
    assert_eq!(from_crt, from_key);
}
