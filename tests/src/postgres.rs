//! A PostgreSQL server for tests, run from the machine's PostgreSQL binaries (`initdb`, `postgres`, `pg_ctl`) in a
//! temporary folder on a free port. When the binaries are missing, the Debian package is installed first.
//!
//! Tests connect on loopback without a password. Pods of the test node connect to this machine's own address, as
//! to an external database, with the superuser's password (generated per server) — only from the pods' range.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{Uid, User};

use crate::error::{Error, Result, io};
use crate::process::{ServerProcess, free_port, run_to_completion};

/// The PostgreSQL major version the tests run.
pub const MAJOR_VERSION: u32 = 15;

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct PostgresServer {
    pub port: u16,
    /// The machine's address it also listens on, for pods (`None` on a machine with loopback only).
    pub pod_address: Option<std::net::Ipv4Addr>,
    /// The superuser's password, asked of connections from pods.
    pub pod_password: String,
    bin: PathBuf,
    data: PathBuf,
    process: ServerProcess,
    run_as: Option<User>,
}

impl PostgresServer {
    /// Creates a cluster under `dir` and starts it on a free port of 127.0.0.1 and of this machine's address.
    pub fn start(dir: &Path) -> Result<Self> {
        let bin = binaries()?;
        // PostgreSQL refuses to run as root; then it runs as the `postgres` user (or `nobody`).
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .or_else(|| User::from_name("nobody").ok().flatten())
                .ok_or_else(|| {
                    Error::Setup(
                        "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as"
                            .to_owned(),
                    )
                })?;
            Some(user)
        } else {
            None
        };
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let data = dir.join("data");
        let sockets = dir.join("sockets");
        std::fs::create_dir_all(&sockets).map_err(io(format!("cannot create {}", sockets.display())))?;
        if let Some(user) = &run_as {
            for path in [dir, sockets.as_path()] {
                nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                    .map_err(|e| Error::Setup(format!("cannot give {} to user {}: {e}", path.display(), user.name)))?;
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("--pgdata").arg(&data).args([
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        as_user(&mut initdb, run_as.as_ref());
        run_to_completion(initdb, &dir.join("initdb.log"))?;
        let pod_address = crate::kubernetes::host_address();
        let pod_password = uuid::Uuid::new_v4().simple().to_string();
        let listen = match pod_address {
            Some(address) => {
                // Pods come from their own range, or from the node's address when a Service's traffic is masqueraded.
                let hba = data.join("pg_hba.conf");
                let mut rules = std::fs::read_to_string(&hba).map_err(io(format!("cannot read {}", hba.display())))?;
                rules.push_str(&format!(
                    "\n# Pods of the test node (airq-testenv)\nhost all all {} scram-sha-256\nhost all all {address}/32 scram-sha-256\n",
                    crate::node::POD_CIDR
                ));
                std::fs::write(&hba, rules).map_err(io(format!("cannot write {}", hba.display())))?;
                format!("listen_addresses=127.0.0.1,{address}")
            }
            None => "listen_addresses=127.0.0.1".to_owned(),
        };
        let log = dir.join("postgres.log");
        let mut last_error = None;
        for _attempt in 0..3 {
            let port = free_port()?;
            let mut postgres = Command::new(bin.join("postgres"));
            postgres
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&sockets);
            // Durability is irrelevant for a throw-away test cluster; speed is not.
            for setting in [
                listen.as_str(),
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
                "max_connections=500",
                "shared_buffers=128MB",
                "log_min_messages=warning",
            ] {
                postgres.arg("-c").arg(setting);
            }
            as_user(&mut postgres, run_as.as_ref());
            // SIGQUIT is PostgreSQL's immediate shutdown.
            let process = ServerProcess::spawn("PostgreSQL", postgres, &log, Signal::SIGQUIT)?;
            let mut server = Self {
                port,
                pod_address,
                pod_password: pod_password.clone(),
                bin: bin.clone(),
                data: data.clone(),
                process,
                run_as: run_as.clone(),
            };
            match server
                .wait_ready(Duration::from_secs(60))
                .and_then(|()| server.set_password())
            {
                Ok(()) => return Ok(server),
                Err(err) => {
                    server.stop();
                    if !server.process.failed_on_taken_port() {
                        return Err(err);
                    }
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Setup("PostgreSQL did not start".to_owned())))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.process.check_running()?;
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
                .status()
                .map_err(io(format!("cannot run {}", self.bin.join("pg_isready").display())))?;
            if ready.success() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(self.process.error(format!(
                    "does not accept connections on 127.0.0.1:{} after {}s",
                    self.port,
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn set_password(&self) -> Result<()> {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .arg("-c")
        .arg(format!("alter role postgres password '{}'", self.pod_password));
        let log = self.data.with_file_name("password.log");
        run_to_completion(psql, &log)
    }

    /// The superuser's connection URL.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A fast shutdown through `pg_ctl`, then the process is reaped.
    pub fn stop(&mut self) {
        let mut pg_ctl = Command::new(self.bin.join("pg_ctl"));
        pg_ctl
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "10"]);
        as_user(&mut pg_ctl, self.run_as.as_ref());
        let _ = pg_ctl.output();
        self.process.stop(Signal::SIGQUIT, Duration::from_secs(5));
    }
}

fn as_user(command: &mut Command, user: Option<&User>) {
    if let Some(user) = user {
        use std::os::unix::process::CommandExt;
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        command.env("HOME", &user.dir).env("USER", &user.name);
    }
}

/// The folder of the PostgreSQL server binaries: `$AIRQ_PG_BIN`, or Debian's `/usr/lib/postgresql/<major>/bin`
/// (installing `postgresql-15` when absent), or wherever `initdb` is on `PATH`.
pub fn binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AIRQ_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(Error::Setup(format!("AIRQ_PG_BIN={} holds no initdb", dir.display())))
        };
    }
    if let Some(dir) = find_binaries() {
        return Ok(dir);
    }
    install_debian_package()?;
    find_binaries().ok_or_else(|| {
        Error::Setup(format!(
            "postgresql-{MAJOR_VERSION} was installed but /usr/lib/postgresql/{MAJOR_VERSION}/bin/initdb is still missing"
        ))
    })
}

fn find_binaries() -> Option<PathBuf> {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{MAJOR_VERSION}/bin"));
    if debian.join("initdb").is_file() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    })
}

fn install_debian_package() -> Result<()> {
    let package = format!("postgresql-{MAJOR_VERSION}");
    crate::debian::install(
        &[package.as_str()],
        &format!("PostgreSQL {MAJOR_VERSION} is not installed (or set AIRQ_PG_BIN to a folder holding initdb)"),
        &std::env::temp_dir().join("airq-testenv-apt.log"),
    )
}
