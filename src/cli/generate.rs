//! `hookrelay generate man DIR` and `hookrelay generate completions DIR`: man pages and shell
//! completions generated from this command line (clap_mangen, clap_complete), so that they
//! cannot drift from it. packaging/deb/build.sh runs them; the command is hidden from `--help`,
//! and from the pages and completions it writes ([`super::command`] does not have it).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use clap_complete::Shell;

use super::EXIT_FAILURE;

/// The hidden command, added to the parser next to [`super::Command`].
#[derive(Debug, Subcommand)]
pub enum Hidden {
    /// Write man pages or shell completions generated from this command line (packaging)
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// hookrelay.1, and hookrelay-COMMAND.1 for every command and subcommand
    Man {
        /// Where to write them (created when missing)
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The pages' date, YYYY-MM-DD [default: none]
        #[arg(long, value_name = "DATE")]
        date: Option<String>,
    },
    /// hookrelay.bash (bash), _hookrelay (zsh) and hookrelay.fish (fish)
    Completions {
        /// Where to write them (created when missing)
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Runs `generate …`: prints the path of every file written.
pub fn main(hidden: Hidden) -> ExitCode {
    let Hidden::Generate { what } = hidden;
    let written = match what {
        Generate::Man { dir, date } => man_pages(&dir, date.as_deref()),
        Generate::Completions { dir } => completions(&dir),
    };
    match written {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hookrelay: generate: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Sections appended to hookrelay(1), after what clap_mangen renders from the command line.
const MAIN_PAGE_TAIL: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
success
.TP
\fB1\fR
failure: a store failure in \fBrun\fR, a failed \fBdoctor\fR check, \fBauthorize\fR refused,
\fBdead replay\fR or \fBdead purge\fR naming an id that is not a dead letter
.TP
\fB2\fR
usage
.TP
\fB69\fR
the daemon is needed but unreachable, yet another process holds the store
.TP
\fB77\fR
the daemon rejected the admin token
.TP
\fB78\fR
invalid configuration
.SH FILES
.TP
\fI/etc/hookrelay/config.toml\fR
The configuration file; see \fBhookrelay.toml\fR(5).
.TP
\fI/etc/hookrelay/\fR
Secret files named by the configuration (root:root 0600), handed to the service as systemd
credentials.
.TP
\fI/var/lib/hookrelay/\fR
The durable queue (\fBstorage.path\fR in the package's configuration).
.SH "SEE ALSO"
\fBhookrelay.toml\fR(5), \fBsystemctl\fR(1), \fBjournalctl\fR(1)
.PP
/usr/share/doc/hookrelay/docs/operations.md.gz
"#;

/// Writes hookrelay.1 and one page per visible command and subcommand (`hookrelay-dead-list.1`),
/// as Debian packages do for git-like commands.
pub fn man_pages(dir: &Path, date: Option<&str>) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = super::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, true, dir, date, &mut written)?;
    Ok(written)
}

fn write_pages(
    cmd: &clap::Command,
    top: bool,
    dir: &Path,
    date: Option<&str>,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let mut man = clap_mangen::Man::new(cmd.clone())
        .source(format!("hookrelay {}", env!("CARGO_PKG_VERSION")))
        .manual("hookrelay manual");
    if let Some(date) = date {
        man = man.date(date);
    }
    let mut page = Vec::new();
    man.render(&mut page)?;
    if top {
        page.extend_from_slice(MAIN_PAGE_TAIL.as_bytes());
    } else {
        page.extend_from_slice(
            b".SH \"SEE ALSO\"\n\\fBhookrelay\\fR(1), \\fBhookrelay.toml\\fR(5)\n",
        );
    }
    let path = dir.join(man.get_filename());
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&page)?;
    file.flush()?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, false, dir, date, written)?;
    }
    Ok(())
}

/// Writes the bash, zsh and fish completions.
pub fn completions(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = super::command();
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| clap_complete::generate_to(shell, &mut cmd, "hookrelay", dir))
        .collect()
}
