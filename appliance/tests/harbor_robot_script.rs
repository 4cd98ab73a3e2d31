//! The Job script that makes Harbor's robot account for the runners, run by
//! /bin/sh with curl against a FAKE Harbor on loopback (a small Python HTTP
//! server standing in for Harbor's API: it records each request and answers
//! as Harbor's API documents). No Harbor runs here.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use hearth_appliance::platform::ROBOT_SCRIPT;

const FAKE_HARBOR: &str = r#"
import http.server, json, sys
exists = sys.argv[1] == "exists"
log = open(sys.argv[2], "a")
class H(http.server.BaseHTTPRequestHandler):
    def record(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        log.write(f"{self.command} {self.path} auth={self.headers.get('Authorization')} {body}\n"); log.flush()
    def answer(self, code, body):
        data = json.dumps(body, separators=(",", ":")).encode()  # compact, as Go writes it
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_POST(self):
        self.record()
        if exists: self.answer(409, {"errors": [{"code": "CONFLICT", "message": "robot exists"}]})
        else: self.answer(201, {"id": 7, "name": "robot$hearth-runner", "secret": "x", "expires_at": -1})
    def do_GET(self):
        self.record(); self.answer(200, [{"id": 12, "name": "robot$hearth-runner", "level": "system", "permissions": []}])
    def do_PATCH(self):
        self.record(); self.answer(200, {})
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_port, flush=True)
s.serve_forever()
"#;

fn run(state: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests");
    let mut server = Command::new("python3")
        .args(["-c", FAKE_HARBOR, state])
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let out = Command::new("sh")
        .args(["-c", ROBOT_SCRIPT])
        .env("HARBOR_API", format!("http://127.0.0.1:{}/api/v2.0", port.trim()))
        .env("HARBOR_ADMIN_PASSWORD", "AdminPass1")
        .env("ROBOT_PASSWORD", "Hr1RobotPass")
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let requests = std::fs::read_to_string(&log).unwrap_or_default();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        requests,
    )
}

#[test]
fn a_new_robot_is_made_and_given_the_appliances_password() {
    let (ok, out, requests) = run("new");
    assert!(ok, "{out}\n{requests}");
    let lines: Vec<&str> = requests.lines().collect();
    // admin:AdminPass1 in basic auth.
    let auth = "auth=Basic YWRtaW46QWRtaW5QYXNzMQ==";
    assert!(lines[0].starts_with(&format!("POST /api/v2.0/robots {auth} ")), "{requests}");
    let body: serde_json::Value = serde_json::from_str(lines[0].splitn(5, ' ').nth(4).unwrap()).unwrap();
    assert_eq!(body["level"], "system");
    assert_eq!(body["secret"], "Hr1RobotPass");
    assert_eq!(body["permissions"][0]["namespace"], "*");
    assert_eq!(lines[1], format!("PATCH /api/v2.0/robots/7 {auth} {{\"secret\":\"Hr1RobotPass\"}}"));
    assert!(out.contains("(id 7) has the appliance's password"), "{out}");
}

#[test]
fn an_existing_robot_is_found_and_given_the_password_again() {
    let (ok, out, requests) = run("exists");
    assert!(ok, "{out}\n{requests}");
    let lines: Vec<&str> = requests.lines().collect();
    assert!(lines[1].starts_with("GET /api/v2.0/robots?q=name%3Drobot%24hearth-runner "), "{requests}");
    assert!(lines[2].starts_with("PATCH /api/v2.0/robots/12 "), "{requests}");
}
