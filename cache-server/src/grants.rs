//! What a caller may do to a repository: the access levels and the grants
//! by repository prefix. Below both ways of deciding it — the auth file's
//! users (`auth`) and CI tokens' claims (`oidc`) — so neither imports the
//! other's module for them.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    None,
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Grant {
    /// Repository prefix; "" grants every repository.
    #[serde(default)]
    pub prefix: String,
    pub access: Access,
}
