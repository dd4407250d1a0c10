//! Which grants a verified token's claims earn: rules from the auth file,
//! each naming an issuer, the claims a token must carry, and grants whose
//! prefixes are templates over the claims (`cache/{project_path}/main/`).
//! Pure, so every edge is unit-tested.
//!
//! A template value comes from the issuer, not from the caller, yet it is
//! made safe anyway: lower-cased (repository names are; GitHub's and
//! GitLab's project names are case-insensitive), it must be a plain
//! repository path (letters, digits, `.`, `_`, `-` and `/` between
//! non-empty segments, none of them `.` or `..`); anything else makes the
//! grant not apply, never a wider prefix. `{ref_slug}` is derived for every token: its `ref` without
//! `refs/heads/` or `refs/tags/`, with every character outside that set
//! turned into `-` (GitLab's `CI_COMMIT_REF_SLUG`, as Kiln computes it).

use crate::grants::Grant;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One rule of the auth file's `rules`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The issuer (`iss`) whose tokens it applies to.
    pub issuer: String,
    /// Claims the token must carry with exactly these values (booleans and
    /// numbers compared as their JSON text: `"true"`); `"*"` asks only that
    /// the claim is present.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    pub grants: Vec<Grant>,
}

/// The claim's value as rules compare it and templates use it.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `refs/heads/feature/X` → `feature-x` (GitLab's `CI_COMMIT_REF_SLUG`).
pub fn ref_slug(r: &str) -> String {
    let r = r
        .strip_prefix("refs/heads/")
        .or_else(|| r.strip_prefix("refs/tags/"))
        .unwrap_or(r)
        .to_lowercase();
    let mut cut = r.len().min(63);
    while !r.is_char_boundary(cut) {
        cut -= 1;
    }
    let s: String = r[..cut]
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-').to_string()
}

/// Whether `v` may stand in a repository prefix.
fn path_safe(v: &str) -> bool {
    !v.is_empty()
        && v.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        })
}

/// `template` with each `{claim}` replaced; `None` when a claim is missing
/// or unsafe, or a brace is unmatched.
fn expand(template: &str, claims: &Map<String, Value>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}')? + i;
        let name = &rest[i + 1..end];
        let value = if name == "ref_slug" {
            claims.get("ref").and_then(text).map(|r| ref_slug(&r))
        } else {
            claims.get(name).and_then(text).map(|v| v.to_lowercase())
        }?;
        if !path_safe(&value) {
            return None;
        }
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    if rest.contains('}') {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

impl Rule {
    fn applies(&self, issuer: &str, claims: &Map<String, Value>) -> bool {
        self.issuer == issuer
            && self
                .claims
                .iter()
                .all(|(k, want)| match claims.get(k).and_then(text) {
                    Some(v) => want == "*" || &v == want,
                    None => false,
                })
    }
}

/// Every grant the rules give a token of `issuer` with `claims`; a grant
/// whose template cannot be filled safely is left out.
pub fn grants(rules: &[Rule], issuer: &str, claims: &Map<String, Value>) -> Vec<Grant> {
    rules
        .iter()
        .filter(|r| r.applies(issuer, claims))
        .flat_map(|r| &r.grants)
        .filter_map(|g| {
            Some(Grant {
                prefix: expand(&g.prefix, claims)?,
                access: g.access,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::Access;

    fn claims(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn rules() -> Vec<Rule> {
        serde_json::from_value(serde_json::json!([
            {"issuer": "https://gitlab.example", "claims": {"ref_protected": "true"},
             "grants": [{"prefix": "cache/{project_path}/main/", "access": "write"}]},
            {"issuer": "https://gitlab.example", "claims": {"project_path": "*"},
             "grants": [{"prefix": "cache/{project_path}/branch/{ref_slug}/", "access": "write"},
                        {"prefix": "cache/{project_path}/main/", "access": "read"}]}
        ]))
        .unwrap()
    }

    #[test]
    fn protected_refs_write_main_and_others_only_their_branch() {
        let main = claims(serde_json::json!({
            "project_path": "team/app", "ref": "main", "ref_protected": "true"}));
        let g = grants(&rules(), "https://gitlab.example", &main);
        assert!(g
            .iter()
            .any(|g| g.prefix == "cache/team/app/main/" && g.access == Access::Write));
        let pr = claims(serde_json::json!({
            "project_path": "team/app", "ref": "refs/heads/Feature/X", "ref_protected": "false"}));
        let g = grants(&rules(), "https://gitlab.example", &pr);
        let got: Vec<(&str, Access)> = g.iter().map(|g| (g.prefix.as_str(), g.access)).collect();
        assert_eq!(
            got,
            [
                ("cache/team/app/branch/feature-x/", Access::Write),
                ("cache/team/app/main/", Access::Read)
            ]
        );
        // Another issuer's token earns nothing from these rules.
        assert!(grants(&rules(), "https://other", &pr).is_empty());
    }

    #[test]
    fn claims_that_would_widen_a_prefix_make_the_grant_not_apply() {
        for bad in ["../other", "team/../x", "a/./b", "a//b", "", "x}y", "a b"] {
            let c = claims(serde_json::json!({"project_path": bad, "ref": "main"}));
            let g = grants(&rules(), "https://gitlab.example", &c);
            assert!(g.iter().all(|g| !g.prefix.contains("..")), "{bad}: {g:?}");
            assert!(
                g.iter()
                    .all(|g| g.prefix.starts_with("cache/") && !g.prefix.contains("//")),
                "{bad}: {g:?}"
            );
            assert!(g.is_empty(), "{bad}: {g:?}");
        }
        // Case does not make another scope.
        let c = claims(serde_json::json!({"project_path": "Team/App", "ref": "main"}));
        let g = grants(&rules(), "https://gitlab.example", &c);
        assert_eq!(g[1].prefix, "cache/team/app/main/");
        // A ref that slugs to nothing leaves the branch grant out.
        let c = claims(serde_json::json!({"project_path": "team/app", "ref": "refs/heads/---"}));
        let g = grants(&rules(), "https://gitlab.example", &c);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(g[0].prefix, "cache/team/app/main/");
        assert_eq!(g[0].access, Access::Read);
    }

    #[test]
    fn slugs_follow_the_ref() {
        assert_eq!(ref_slug("refs/heads/main"), "main");
        assert_eq!(ref_slug("refs/tags/v1.2"), "v1-2");
        assert_eq!(ref_slug("fix_the.thing"), "fix-the-thing");
        assert_eq!(ref_slug(&"a".repeat(80)).len(), 63);
        assert_eq!(ref_slug("refs/pull/7/merge"), "refs-pull-7-merge");
        assert_eq!(ref_slug("Feature/Ä"), "feature");
    }
}
