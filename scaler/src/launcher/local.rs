//! The local launcher: `weir gateway` child processes on 127.0.0.1 (`weir serve --gateways
//! auto` and `weir scaler --launcher local`).

use super::Launcher;
use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Runs `weir gateway` processes on 127.0.0.1: the single-machine autoscaling mode.
#[derive(Debug)]
pub struct LocalLauncher {
    exe: PathBuf,
    /// Arguments every gateway gets (metadata, storage, settings).
    args: Vec<String>,
    /// Extra environment (the auth master key).
    env: Vec<(String, String)>,
    /// Environment variables the gateways do not inherit from this process.
    env_remove: Vec<String>,
    dir: PathBuf,
    children: tokio::sync::Mutex<Vec<LocalGateway>>,
    next_id: std::sync::atomic::AtomicI32,
}

#[derive(Debug)]
struct LocalGateway {
    node_id: i32,
    child: tokio::process::Child,
}

impl LocalLauncher {
    pub fn new(
        exe: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: PathBuf,
        first_id: i32,
    ) -> Self {
        LocalLauncher {
            exe,
            args,
            env,
            env_remove: Vec::new(),
            dir,
            children: tokio::sync::Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicI32::new(first_id),
        }
    }

    /// Gateways do not inherit these environment variables (settings they get otherwise).
    pub fn without_env(mut self, names: Vec<String>) -> Self {
        self.env_remove = names;
        self
    }

    async fn start_one(&self) -> Result<LocalGateway> {
        use tokio::io::AsyncBufReadExt;
        let node_id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = self.dir.join(format!("gateway-{node_id}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        for name in &self.env_remove {
            cmd.env_remove(name);
        }
        cmd.arg("gateway")
            .args(&self.args)
            .arg("--node-id")
            .arg(node_id.to_string())
            .arg("--data-dir")
            .arg(&dir)
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .envs(self.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} gateway", self.exe.display()))?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(b) = line.strip_prefix("weir is ready: bootstrap.servers=") {
                    return Some(b.to_string());
                }
            }
            None
        })
        .await;
        let bootstrap = match ready {
            Ok(Some(b)) => b,
            _ => {
                let _ = child.start_kill();
                bail!(
                    "gateway {node_id} did not become ready (log: {})",
                    dir.join("gateway.log").display()
                );
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tracing::info!(node_id, %bootstrap, ready_ms = started.elapsed().as_millis() as u64,
            "local launcher: gateway started");
        Ok(LocalGateway { node_id, child })
    }
}

/// Asks the kernel to stop a child when this process dies (Linux), so that a killed
/// `weir serve --gateways auto` leaves no gateways behind.
fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

#[async_trait]
impl Launcher for LocalLauncher {
    fn name(&self) -> String {
        "local".into()
    }

    async fn current(&self) -> Result<usize> {
        let mut children = self.children.lock().await;
        children.retain_mut(|g| match g.child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(node_id = g.node_id, %status, "local launcher: gateway exited");
                false
            }
            _ => true,
        });
        Ok(children.len())
    }

    async fn set(&self, count: usize) -> Result<()> {
        let running = self.current().await?;
        if count > running {
            let started =
                futures::future::join_all((running..count).map(|_| self.start_one())).await;
            let mut children = self.children.lock().await;
            for g in started {
                children.push(g?);
            }
            return Ok(());
        }
        loop {
            let victim = {
                let mut children = self.children.lock().await;
                if children.len() <= count {
                    return Ok(());
                }
                children.pop()
            };
            let Some(mut g) = victim else { return Ok(()) };
            // SIGTERM: the gateway hands its partitions over and deregisters, then exits.
            if let Some(pid) = g.child.id() {
                #[allow(unsafe_code)]
                // SAFETY: kill(2) on the pid of a child this launcher started and has not
                // reaped yet, so the pid cannot have been reused.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            match tokio::time::timeout(Duration::from_secs(30), g.child.wait()).await {
                Ok(_) => tracing::info!(node_id = g.node_id, "local launcher: gateway stopped"),
                Err(_) => {
                    tracing::warn!(
                        node_id = g.node_id,
                        "local launcher: gateway did not stop in 30 s; killing it"
                    );
                    let _ = g.child.kill().await;
                }
            }
        }
    }
}
