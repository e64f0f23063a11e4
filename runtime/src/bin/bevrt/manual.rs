//! `bevrt manual` and `bevrt-tool manual` (`bevrt-tool` includes this file): a command line's
//! reference generated from its clap definition, so the book's CLI pages and the man pages
//! cannot drift from the flags that exist.

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ManualArgs {
    /// `markdown`: the book's reference page on stdout; `man`: one roff page per command in --out.
    #[arg(long, value_enum)]
    pub format: ManualFormat,
    /// Folder for the man pages (created if missing).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum ManualFormat {
    Markdown,
    Man,
}

/// Render `cmd` (the binary's whole command tree) as asked.
pub fn write_manual(a: &ManualArgs, cmd: clap::Command) -> Result<()> {
    match a.format {
        ManualFormat::Markdown => {
            let options = clap_markdown::MarkdownOptions::new()
                .show_footer(false)
                .show_table_of_contents(true);
            print!(
                "{}",
                clap_markdown::help_markdown_command_custom(&cmd, &options)
            );
        }
        ManualFormat::Man => {
            let out = a.out.as_deref().context("--format man needs --out DIR")?;
            std::fs::create_dir_all(out)
                .with_context(|| format!("{}: cannot create", out.display()))?;
            clap_mangen::generate_to(cmd, out)
                .with_context(|| format!("{}: cannot write man pages", out.display()))?;
        }
    }
    Ok(())
}
