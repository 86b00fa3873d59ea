//! Push webhooks from GitHub and Gitea: HMAC-SHA256 signatures checked in
//! constant time, payloads read down to what a run needs.

use crate::git::{check_ref_name, check_sha, Target};
use crate::PipelineError;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    Gitea,
}

impl Provider {
    pub fn parse(name: &str) -> Option<Provider> {
        match name {
            "github" => Some(Provider::GitHub),
            "gitea" => Some(Provider::Gitea),
            _ => None,
        }
    }

    pub fn event_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-github-event",
            Provider::Gitea => "x-gitea-event",
        }
    }

    pub fn signature_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-hub-signature-256",
            Provider::Gitea => "x-gitea-signature",
        }
    }
}

/// Checks `signature` (GitHub: `sha256=<hex>`, Gitea: `<hex>`) over `body`.
pub fn verify(provider: Provider, secret: &str, body: &[u8], signature: Option<&str>) -> Result<(), PipelineError> {
    let signature = signature.ok_or(PipelineError::BadSignature)?.trim();
    let hex_part = match provider {
        Provider::GitHub => signature.strip_prefix("sha256=").ok_or(PipelineError::BadSignature)?,
        Provider::Gitea => signature.strip_prefix("sha256=").unwrap_or(signature),
    };
    let expected = hex::decode(hex_part).map_err(|_| PipelineError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| PipelineError::BadSignature)?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| PipelineError::BadSignature)
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
    #[serde(default)]
    deleted: bool,
}

/// What a push asks for: `None` for a deleted ref (nothing to build).
/// `form` says the body is a form whose `payload` field holds the JSON
/// (GitHub's default content type for a hook).
pub fn push_target(body: &[u8], form: bool) -> Result<Option<Target>, PipelineError> {
    let push: Result<Push, _> = match form {
        false => serde_json::from_slice(body),
        true => {
            let payload = url::form_urlencoded::parse(body).find(|(k, _)| k == "payload").map(|(_, v)| v);
            let payload =
                payload.ok_or_else(|| PipelineError::invalid("payload", "the form has no `payload` field"))?;
            serde_json::from_str(&payload)
        }
    };
    let push = push.map_err(|e| PipelineError::invalid("body", format!("not a push payload: {e}")))?;
    // A deleted ref's `after` is all zeros; an empty one is no commit at all.
    if push.deleted || (!push.after.is_empty() && push.after.chars().all(|c| c == '0')) {
        return Ok(None);
    }
    check_sha("after", &push.after)?;
    let target = if let Some(branch) = push.reference.strip_prefix("refs/heads/") {
        check_ref_name("ref", branch)?;
        Target::Commit { sha: push.after, branch: Some(branch.to_owned()), tag: None }
    } else if let Some(tag) = push.reference.strip_prefix("refs/tags/") {
        check_ref_name("ref", tag)?;
        Target::Commit { sha: push.after, branch: None, tag: Some(tag.to_owned()) }
    } else {
        return Err(PipelineError::invalid("ref", format!("`{}` is neither a branch nor a tag", push.reference)));
    };
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"ref":"refs/heads/main","after":"abc123"}"#;
        let good = sign("s3cret", body);
        assert!(verify(Provider::Gitea, "s3cret", body, Some(&good)).is_ok());
        assert!(verify(Provider::GitHub, "s3cret", body, Some(&format!("sha256={good}"))).is_ok());
        assert!(verify(Provider::GitHub, "s3cret", body, Some(&good)).is_err(), "GitHub's prefix is required");
        assert!(verify(Provider::Gitea, "other", body, Some(&good)).is_err());
        assert!(verify(Provider::Gitea, "s3cret", b"tampered", Some(&good)).is_err());
        assert!(verify(Provider::Gitea, "s3cret", body, None).is_err());
        assert!(verify(Provider::Gitea, "s3cret", body, Some("zz")).is_err());
    }

    #[test]
    fn pushes_become_targets() {
        let t = push_target(br#"{"ref":"refs/heads/feature/x","after":"abcdef12"}"#, false).unwrap().unwrap();
        assert_eq!(t, Target::Commit { sha: "abcdef12".into(), branch: Some("feature/x".into()), tag: None });
        let t = push_target(br#"{"ref":"refs/tags/v1","after":"abcdef12"}"#, false).unwrap();
        assert_eq!(t, Some(Target::Commit { sha: "abcdef12".into(), branch: None, tag: Some("v1".into()) }));
        assert_eq!(push_target(br#"{"ref":"refs/heads/x","after":"0000000000","deleted":true}"#, false).unwrap(), None);
        assert!(push_target(br#"{"ref":"refs/heads/x","after":"--upload-pack=x"}"#, false).is_err());
        assert!(push_target(br#"{"ref":"refs/heads/x","after":""}"#, false).is_err());
        assert!(push_target(b"[]", false).is_err());
        // GitHub's default: the JSON in a form's `payload` field.
        let form = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%2C%22after%22%3A%22abcdef12%22%7D";
        assert_eq!(push_target(form, true).unwrap().unwrap().branch(), Some("main"));
        assert!(
            matches!(push_target(b"other=1", true), Err(PipelineError::Invalid { field, .. }) if field == "payload")
        );
    }
}
