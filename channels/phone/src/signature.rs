//! `X-Twilio-Signature`: HMAC-SHA1, keyed with the account's auth token, of the full URL the
//! provider requested followed by every POST parameter as name and value, sorted by name (the
//! values of a repeated name sorted too, each once), base64-encoded. Written here because no maintained crate
//! implements the provider's scheme apart from its whole SDK.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The signature of a request to `url` with these form parameters.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    // Sorted by name, a repeated name's values sorted and each (name, value) once: as the
    // provider's SDKs compute it.
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
        // HMAC takes keys of any length: this is never reached.
        return String::new();
    };
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `given` is the signature of the request, for `url` as written and with its default port
/// added or removed: the provider signs the URL as it was configured, which a proxy or a port in
/// the configured public URL may make differ from the other form. Compared in constant time.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], given: &str) -> bool {
    let mut ok = false;
    for candidate in url_variants(url) {
        let expected = sign(auth_token, &candidate, params);
        // Every variant is compared, whatever the earlier ones gave.
        ok |= constant_time_eq(expected.as_bytes(), given.as_bytes());
    }
    ok
}

/// `url` as given, without its port, and with its scheme's default port: what the provider's SDKs
/// accept, since the URL the provider signed may name the port or not (and a proxy may change it).
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some(scheme_end) = url.find("://") else { return out };
    let default = match url[..scheme_end].to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return out,
    };
    let start = scheme_end + 3;
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |j| start + j);
    let authority = &url[start..end];
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => authority.split_at(i + 1),
        None => ("", authority),
    };
    let host = match hostport.rfind(':') {
        Some(i) if !hostport[i + 1..].is_empty() && hostport[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &hostport[..i]
        }
        _ => hostport,
    };
    let (prefix, rest) = (&url[..start], &url[end..]);
    for variant in [format!("{prefix}{userinfo}{host}{rest}"), format!("{prefix}{userinfo}{host}:{default}{rest}")] {
        if !out.contains(&variant) {
            out.push(variant);
        }
    }
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// The provider's published worked example ("Validating Requests are coming from Twilio").
    #[test]
    fn the_published_worked_example() {
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(sign("12345", url, &p), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify("12345", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        // The SDKs' port cases: the same request configured with the default port written out.
        assert!(verify("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        // Anything else changed fails.
        assert!(!verify("12345", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ"));
        assert!(!verify("12346", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        let mut other = p.clone();
        other[2].1 = "1235".into();
        assert!(!verify("12345", url, &other, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    }

    #[test]
    fn default_port_variants() {
        assert_eq!(
            url_variants("https://h.example/p?q=1"),
            vec!["https://h.example/p?q=1", "https://h.example:443/p?q=1"]
        );
        assert_eq!(url_variants("http://h.example:80/p"), vec!["http://h.example:80/p", "http://h.example/p"]);
        assert_eq!(url_variants("https://[::1]/p"), vec!["https://[::1]/p", "https://[::1]:443/p"]);
    }

    /// The request-validator test suite of the provider's SDKs (twilio-php, twilio-csharp): auth
    /// token `12345`, the documented URL, these parameters.
    #[test]
    fn the_sdks_test_vectors() {
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let ok = |url: &str, p: &[(String, String)], sig: &str| verify("12345", url, p, sig);
        assert!(ok(url, &p, "RSOYDt4T1cUTdK1PDd93/VVr8B8="), "validate");
        assert!(!ok(url, &p, "FAIL"), "fails when incorrect");
        let array = params(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert!(ok(url, &array, "IK+Dwps556ElfBT0I3Rgjkr1wJU="), "array and duplicates");
        assert!(ok("https://MyCompany.com/myapp.php?foo=1&bar=2", &p, "g9IN/x4Cft2g517EjYvEvM/W7LU="), "mixed case");
        assert!(
            ok("https://MyCompany.com:1234/myapp.php?foo=1&bar=2", &p, "PCqOZm8cnu/L6+u5i5fuEd+Iac4="),
            "mixed case with port"
        );
        assert!(
            ok("https://mycompany.com:1234/myapp.php?foo=1&bar=2", &p, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            "removes port (https)"
        );
        assert!(
            ok("http://mycompany.com:1234/myapp.php?foo=1&bar=2", &p, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
            "removes port (http)"
        );
        assert!(ok(url, &p, "kvajT1Ptam85bY51eRf/AJRuM3w="), "adds port 443");
        assert!(ok("http://mycompany.com/myapp.php?foo=1&bar=2", &p, "0ZXoZLH/DfblKGATFgpif+LLRf4="), "adds port 80");
        assert!(
            ok("https://user:pass@mycompany.com/myapp.php?foo=1&bar=2", &p, "CukzLTc1tT5dXEDIHm/tKBanW10="),
            "credentials"
        );
        assert!(ok("https://user@mycompany.com/myapp.php?foo=1&bar=2", &p, "2YRLlVAflCqxaNicjMpJcSTgzSs="), "user");
        assert!(
            ok("https://user:pass@mycompany.com/myapp.php?foo=1&bar=2", &p, "ZQFR1PTIZXF2MXB8ZnKCvnnA+rI="),
            "credentials, port added"
        );
    }
}
