//! The flags ci-runner and ci-observer share for fetching over https and
//! ssh: credentials and trust, each from a file read once at start.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::git::{GitAuth, GitAuthFiles, GitError};
use crate::util::parse_secs;

#[derive(Args, Debug, Clone)]
pub struct GitArgs {
    /// For https repositories: a file holding a token, sent as the password of HTTP basic auth
    /// with the URL's user name, else x-access-token (GitHub, Gitea/Forgejo and GitLab accept a
    /// personal or installation token so). Hidden from tests.
    #[arg(long, value_name = "FILE")]
    pub git_token_file: Option<PathBuf>,
    /// For ssh repositories: a private key without passphrase (FILE.pub beside it is used when
    /// present). Hidden from tests.
    #[arg(long, value_name = "FILE")]
    pub git_ssh_key_file: Option<PathBuf>,
    /// For https repositories: CA certificates (PEM) trusted in addition to the system's.
    #[arg(long, value_name = "FILE")]
    pub git_ca_file: Option<PathBuf>,
    /// For ssh repositories: the OpenSSH known_hosts file that must hold the server's host key
    /// [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub git_known_hosts: Option<PathBuf>,
    /// Seconds a git server may take to accept a connection, and to answer, before a fetch fails.
    #[arg(long, default_value = "30", value_parser = parse_secs, allow_negative_numbers = true, value_name = "SECS")]
    pub git_timeout: Duration,
}

impl GitArgs {
    /// Sets the network timeout and reads every file, once: what both
    /// programs do before their first fetch.
    pub fn load(&self) -> Result<GitAuth, GitError> {
        crate::git::set_network_timeout(self.git_timeout)?;
        GitAuth::load(&GitAuthFiles {
            token: self.git_token_file.clone(),
            ssh_key: self.git_ssh_key_file.clone(),
            ca: self.git_ca_file.clone(),
            known_hosts: self.git_known_hosts.clone(),
        })
    }
}
