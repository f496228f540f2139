//! `orch-node image ...`: the node's image store from the command line.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry into the node's store.
    Pull {
        image: String,
        /// Registries (host[:port]) to speak plain HTTP to; loopback ones always are.
        #[arg(long)]
        insecure_registry: Vec<String>,
    },
    /// Import an OCI layout or `docker save` archive (plain or gzip).
    Import { file: PathBuf },
    /// Build an image of Debian's busybox-static (`/bin/busybox` with a
    /// link per applet: sh, httpd, wget, ...) and name it IMAGE: a demo or
    /// test image made on the node, with no registry.
    BuildBusybox {
        image: String,
        /// The static busybox binary to put in it.
        #[arg(long, default_value = orch_node::image::build::BUSYBOX)]
        busybox: PathBuf,
    },
    /// List the images in the node's store.
    List,
    /// Forget an image's name (its blobs go with `prune`).
    Rm { image: String },
    /// Delete what no named image uses.
    Prune,
}

pub fn run_image(state_dir: &std::path::Path, command: ImageCommand) -> Result<()> {
    use orch_node::image::{ImageStore, Reference, import};
    let store = ImageStore::open(state_dir)
        .with_context(|| format!("the image store in {}", state_dir.display()))?;
    match command {
        ImageCommand::Pull {
            image,
            insecure_registry,
        } => {
            let reference = Reference::parse(&image)?;
            let client = orch_node::image::registry::RegistryClient::new(insecure_registry)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let descriptor = runtime.block_on(client.pull(&store, &reference, None))?;
            println!("{reference}: {}", descriptor.digest);
        }
        ImageCommand::Import { file } => {
            for name in import::import_archive(&store, &file)? {
                println!("imported {name}");
            }
        }
        ImageCommand::BuildBusybox { image, busybox } => {
            let reference = Reference::parse(&image)?;
            let descriptor =
                orch_node::image::build::busybox_image(&store, &reference, &busybox, &[], &["sh"])
                    .with_context(|| format!("building {reference} from {}", busybox.display()))?;
            println!("{reference}: {}", descriptor.digest);
        }
        ImageCommand::List => {
            println!("{:<70} {:>12}", "IMAGE", "SIZE");
            for image in store.images()? {
                for name in &image.names {
                    println!("{name:<70} {:>12}", image.size);
                }
            }
        }
        ImageCommand::Rm { image } => {
            let reference = Reference::parse(&image)?;
            if !store.untag(&reference)? {
                anyhow::bail!("image {reference} is not on this node");
            }
            println!("untagged {reference}");
        }
        ImageCommand::Prune => {
            let freed = store.collect(&Default::default())?;
            println!("freed {freed} bytes");
        }
    }
    Ok(())
}
