//! What a process's launcher put in its environment, read the same way wherever it is
//! needed (the target's `/proc/PID/environ`, the engine's hints): a leaf module, so that
//! neither imports the other for it.

/// The job a process belongs to, from what its launcher set: torchrun's elastic run id,
/// else the rendezvous address every rank of a torch.distributed job shares
/// (`MASTER_ADDR:MASTER_PORT`: two live jobs cannot share it), else Open MPI's job id or
/// PMIx namespace, else Slurm's job and step. Processes with different keys are never put
/// in one communicator or graph-launch group.
pub fn job_key(get: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let nonempty = |k: &str| {
        get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(id) = nonempty("TORCHELASTIC_RUN_ID") {
        return Some(format!("torchelastic:{id}"));
    }
    if let (Some(a), Some(p)) = (nonempty("MASTER_ADDR"), nonempty("MASTER_PORT")) {
        return Some(format!("master:{a}:{p}"));
    }
    if let Some(id) = nonempty("OMPI_MCA_ess_base_jobid") {
        return Some(format!("ompi:{id}"));
    }
    if let Some(ns) = nonempty("PMIX_NAMESPACE") {
        return Some(format!("pmix:{ns}"));
    }
    if let Some(j) = nonempty("SLURM_JOB_ID") {
        let step = nonempty("SLURM_STEP_ID").unwrap_or_default();
        return Some(format!("slurm:{j}.{step}"));
    }
    None
}
