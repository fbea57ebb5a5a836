//! `weir tenants`: the operator's commands for tenants (accounts), over a running weir's
//! admin API.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::auth_cmd::{seg_of, Client};

#[derive(Args, Debug)]
pub struct TenantsArgs {
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
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Subcommand, Debug)]
enum TenantsCommand {
    /// Creates a tenant: prints its account id and root access key (the secret only now).
    Create { name: String },
    /// Lists tenants.
    List,
    /// Shows one tenant, its clusters and its root keys.
    Describe { account_id: String },
    /// Suspends a tenant: its keys stop authenticating, its connections end.
    Suspend { account_id: String },
    /// Resumes a suspended tenant.
    Resume { account_id: String },
    /// Deletes a tenant with no cluster left, and revokes its keys.
    Delete { account_id: String },
}

pub fn run_tenants(args: TenantsArgs) -> Result<()> {
    let client = Client::new(args.admin, args.admin_token);
    let path = |a: &str, tail: &str| format!("/v1/tenants/{}{tail}", seg_of(a));
    let out = match &args.command {
        TenantsCommand::Create { name } => client.call(
            "POST",
            "/v1/tenants",
            Some(json!({ "name": name }).to_string()),
        )?,
        TenantsCommand::List => client.call("GET", "/v1/tenants", None)?,
        TenantsCommand::Describe { account_id } => {
            client.call("GET", &path(account_id, ""), None)?
        }
        TenantsCommand::Suspend { account_id } => {
            client.call("POST", &path(account_id, "/suspend"), None)?
        }
        TenantsCommand::Resume { account_id } => {
            client.call("POST", &path(account_id, "/resume"), None)?
        }
        TenantsCommand::Delete { account_id } => {
            client.call("DELETE", &path(account_id, ""), None)?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match &args.command {
        TenantsCommand::Create { .. } => {
            let get = |k: &str| out.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            println!("account_id:        {}", get("account_id"));
            println!("root principal:    {}", get("root_principal"));
            println!("access_key_id:     {}", get("access_key_id"));
            println!("secret_access_key: {}", get("secret_access_key"));
            println!("(the secret is shown only now)");
        }
        TenantsCommand::List => {
            let list = out
                .get("tenants")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            println!("{:<14} {:<10} {:>8}  NAME", "ACCOUNT", "STATE", "CLUSTERS");
            for t in list {
                println!(
                    "{:<14} {:<10} {:>8}  {}",
                    t["account_id"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    t["clusters"].as_u64().unwrap_or(0),
                    t["name"].as_str().unwrap_or("")
                );
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(())
}
