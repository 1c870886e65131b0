pub fn run(_c: &crate::config::ClusterConfig, _j: bool) -> crate::error::Result<()> {
    Err(crate::error::Error::Config("status: not built yet".into()))
}
