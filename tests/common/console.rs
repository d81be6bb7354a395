//! A plain HTTP/1.1 client of the owner's console (one connection per
//! request, as the daemon closes each), and a logged-in session of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// An answer: status, headers (names lowercase) and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }
}

/// `127.0.0.1:PORT` and the path of a console URL.
pub fn split_url(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://127.0.0.1:").expect("a console URL on 127.0.0.1");
    let (port, path) = rest.split_once('/').unwrap();
    (port.parse().unwrap(), format!("/{path}"))
}

fn write_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    s
}

fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    (status, headers)
}

/// One request on its own connection, read to the end.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let s = write_request(port, method, path, headers, body);
    let mut reader = BufReader::new(s);
    let (status, headers) = read_head(&mut reader);
    let mut body = String::new();
    let _ = reader.read_to_string(&mut body);
    Resp { status, headers, body }
}

/// A browser session: its cookie and CSRF token.
pub struct Session {
    pub port: u16,
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    /// Uses the login `url` and reads the session's CSRF token.
    pub fn login(url: &str) -> Session {
        let (port, path) = split_url(url);
        let resp = request(port, "GET", &path, &[], "");
        assert_eq!(resp.status, 303, "{resp:?}");
        let set = resp.header("set-cookie").expect("a cookie");
        let cookie = set.split(';').next().unwrap().to_string();
        let mut s = Session { port, cookie, csrf: String::new() };
        s.csrf = s.get("/console/api/session").json()["csrf"].as_str().unwrap().to_string();
        s
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn get(&self, path: &str) -> Resp {
        request(self.port, "GET", path, &[("Cookie", &self.cookie)], "")
    }

    /// A POST with the cookie, the console's Origin, the CSRF token and a JSON type.
    pub fn post(&self, path: &str, body: &str) -> Resp {
        let origin = self.origin();
        let headers = [
            ("Cookie", self.cookie.as_str()),
            ("Origin", &origin),
            ("X-CSRF-Token", &self.csrf),
            ("Content-Type", "application/json"),
        ];
        request(self.port, "POST", path, &headers, body)
    }

    /// Reads `/console/api/events` until an event for which `want(name, data)`
    /// holds (20 s at most); returns its data.
    pub fn wait_event(&self, want: impl Fn(&str, &serde_json::Value) -> bool) -> serde_json::Value {
        self.events(|stream| stream.until(&want))
    }

    /// Opens the event stream and hands it to `f`.
    pub fn events<T>(&self, f: impl FnOnce(&mut Events) -> T) -> T {
        let s = write_request(self.port, "GET", "/console/api/events", &[("Cookie", &self.cookie)], "");
        let mut reader = BufReader::new(s);
        let (status, headers) = read_head(&mut reader);
        assert_eq!(status, 200, "{headers:?}");
        f(&mut Events { reader })
    }
}

/// An open event stream (chunked transfer coding is read line by line:
/// chunk sizes are lines that are neither `event:` nor `data:`).
pub struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    /// The next `(event, data)`.
    pub fn next(&mut self) -> Option<(String, serde_json::Value)> {
        let mut name = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end();
            if let Some(n) = l.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = l.strip_prefix("data: ") {
                return Some((name, serde_json::from_str(d).unwrap()));
            }
        }
    }

    /// Events until one for which `want` holds (20 s at most).
    pub fn until(&mut self, want: &impl Fn(&str, &serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.next() {
                Some((name, data)) if want(&name, &data) => return data,
                Some(_) => {}
                None => break,
            }
        }
        panic!("the awaited event did not come");
    }
}
