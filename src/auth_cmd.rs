//! `weir auth`: the commands that call a running gateway's admin HTTP API (`weir-admin`).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct AuthArgs {
    /// URL of a running weir's admin API.
    #[arg(
        long,
        env = "WEIR_ADMIN_URL",
        default_value = "http://127.0.0.1:9644",
        global = true
    )]
    admin: String,
    /// Bearer token of the admin API, if it has one.
    #[arg(long, env = "WEIR_ADMIN_TOKEN", global = true)]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Access keys for the IAM mechanisms (OAUTHBEARER with an MSK IAM token, AWS_MSK_IAM).
    #[command(subcommand)]
    Key(KeyCommand),
    /// SCRAM-SHA-256/512 users (and PLAIN, which checks the same credentials).
    #[command(subcommand)]
    Scram(ScramCommand),
    /// IAM policy documents attached to principals.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Every principal that has keys, SCRAM credentials or policies.
    Principals,
    /// The cluster's ARNs, for writing policies.
    Cluster,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Issues an access key pair for a principal (the secret is shown only now).
    Create {
        #[arg(long)]
        principal: String,
    },
    /// Lists access keys (never their secrets).
    List {
        #[arg(long)]
        principal: Option<String>,
    },
    /// Issues a new key for the same principal and revokes the old one.
    Rotate { access_key_id: String },
    /// Revokes a key: it no longer authenticates new connections.
    Revoke { access_key_id: String },
}

#[derive(Subcommand, Debug)]
enum ScramCommand {
    /// Sets a user's password (salted credentials are stored, never the password).
    Set {
        user: String,
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// SCRAM-SHA-256 or SCRAM-SHA-512 [default: both].
        #[arg(long)]
        mechanism: Vec<String>,
        /// PBKDF2 iterations [default: 4096].
        #[arg(long)]
        iterations: Option<u32>,
    },
    List,
    Delete {
        user: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Attaches (or replaces) a named policy document on a principal.
    Put {
        principal: String,
        name: String,
        /// Policy JSON file ("-" for standard input).
        #[arg(long)]
        file: String,
    },
    /// Shows a principal's policies.
    List { principal: String },
    /// Detaches a policy.
    Delete { principal: String, name: String },
}

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub(crate) fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<Value> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), path);
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(body.unwrap_or_default())
            .context("building the request")?;
        let mut resp = self
            .agent
            .run(req)
            .with_context(|| format!("calling the admin API at {url} (is weir serve running?)"))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .context("reading the admin API response")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{status}: {msg}");
        }
        Ok(value)
    }
}

impl Client {
    pub(crate) fn new(base: String, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .new_agent();
        Client { base, token, agent }
    }
}

pub(crate) fn seg_of(s: &str) -> String {
    seg(s)
}

pub fn run_auth(args: AuthArgs) -> Result<()> {
    let client = Client::new(args.admin, args.admin_token);
    let out = match args.command {
        AuthCommand::Key(KeyCommand::Create { principal }) => client.call(
            "POST",
            "/v1/keys",
            Some(json!({ "principal": principal }).to_string()),
        )?,
        AuthCommand::Key(KeyCommand::List { principal }) => {
            let q = principal
                .map(|p| format!("?principal={}", seg(&p)))
                .unwrap_or_default();
            client.call("GET", &format!("/v1/keys{q}"), None)?
        }
        AuthCommand::Key(KeyCommand::Rotate { access_key_id }) => client.call(
            "POST",
            &format!("/v1/keys/{}/rotate", seg(&access_key_id)),
            None,
        )?,
        AuthCommand::Key(KeyCommand::Revoke { access_key_id }) => client.call(
            "POST",
            &format!("/v1/keys/{}/revoke", seg(&access_key_id)),
            None,
        )?,
        AuthCommand::Scram(ScramCommand::Set {
            user,
            password,
            password_stdin,
            mechanism,
            iterations,
        }) => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
                (None, false) => bail!("give --password or --password-stdin"),
            };
            client.call(
                "PUT",
                &format!("/v1/scram/{}", seg(&user)),
                Some(
                    json!({"password": password, "mechanisms": mechanism, "iterations": iterations})
                        .to_string(),
                ),
            )?
        }
        AuthCommand::Scram(ScramCommand::List) => client.call("GET", "/v1/scram", None)?,
        AuthCommand::Scram(ScramCommand::Delete { user }) => {
            client.call("DELETE", &format!("/v1/scram/{}", seg(&user)), None)?
        }
        AuthCommand::Policy(PolicyCommand::Put {
            principal,
            name,
            file,
        }) => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("reading the policy from standard input")?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading policy file {file}"))?
            };
            client.call(
                "PUT",
                &format!("/v1/policies/{}/{}", seg(&principal), seg(&name)),
                Some(text),
            )?
        }
        AuthCommand::Policy(PolicyCommand::List { principal }) => {
            client.call("GET", &format!("/v1/policies/{}", seg(&principal)), None)?
        }
        AuthCommand::Policy(PolicyCommand::Delete { principal, name }) => client.call(
            "DELETE",
            &format!("/v1/policies/{}/{}", seg(&principal), seg(&name)),
            None,
        )?,
        AuthCommand::Principals => client.call("GET", "/v1/principals", None)?,
        AuthCommand::Cluster => client.call("GET", "/v1/cluster", None)?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
