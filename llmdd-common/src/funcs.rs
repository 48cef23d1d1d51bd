//! The table of every traced library function: its id (carried in each record), family,
//! the symbol names it is exported under, and where its interesting arguments live.
//!
//! Argument slots index `CallRecord::args`: 0-5 are the integer argument registers, 6-8 the
//! stack words holding the 7th-9th integer arguments. Structs passed by value shift later
//! arguments (x86-64 SysV): `dim3` (12 bytes) takes two registers, `ncclUniqueId` (128 bytes)
//! goes on the stack and takes none.

use crate::call::NO_SLOT as N;

/// Which library family a function belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// libnccl / librccl (same exported names).
    Nccl,
    /// libcudart.
    CudaRuntime,
    /// libcuda (the driver API).
    CudaDriver,
    /// libamdhip64 (the HIP runtime, AMD GPUs): the same kinds of calls as the CUDA runtime.
    Hip,
    /// libmpi (Open MPI libmpi.so.40, MPICH libmpi.so.12): collectives and point-to-point.
    Mpi,
    /// User-defined probes (`--probe`): any function of any library, by name.
    User,
    /// Gloo (PyTorch's CPU collectives, linked into libtorch_cpu): C++ functions found by
    /// their demangled names.
    Gloo,
    /// vLLM's own collectives (its custom all-reduce in `_C_stable_libtorch.abi3.so`): C++
    /// member functions of `vllm::CustomAllreduce`, found by their demangled names. Like
    /// NCCL's, they enqueue kernels on a stream and return.
    Vllm,
    /// NIXL (libnixl, llm-d's KV-cache transfers between prefill and decode servers):
    /// `nixlAgent` member functions, by their mangled names.
    Nixl,
}

impl Family {
    /// Whether its collectives block the calling thread until every rank has arrived (MPI,
    /// Gloo): a call's return then bounds when the instance completed, on every member.
    /// NCCL's do not: they enqueue on a stream and return.
    pub const fn collectives_block_host(self) -> bool {
        matches!(self, Family::Mpi | Family::Gloo)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Family::Nccl => "nccl",
            Family::CudaRuntime => "cudart",
            Family::CudaDriver => "cuda",
            Family::Hip => "hip",
            Family::Mpi => "mpi",
            Family::User => "user",
            Family::Gloo => "gloo",
            Family::Vllm => "vllm",
            Family::Nixl => "nixl",
        }
    }

    /// Whether its functions return a status code (0 for success). Gloo's entry points and
    /// vLLM's custom all-reduce members return `void` (Gloo throws), so whatever their
    /// return register holds is not an error; user probes return data.
    pub const fn returns_status(self) -> bool {
        !matches!(self, Family::Gloo | Family::Vllm | Family::User)
    }

    /// Whether the family has collectives (calls matched across ranks): NCCL, MPI, and the
    /// user probes declared `collective`.
    pub fn has_collectives(self) -> bool {
        FUNCS
            .iter()
            .chain(user_specs())
            .any(|f| f.family == self && matches!(f.kind, CallKind::Collective))
    }
}

/// What a call means to the analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    Collective,
    P2p,
    GroupStart,
    GroupEnd,
    CommInit,
    CommInitAll,
    CommSplit,
    CommEnd,
    Launch,
    GraphLaunch,
    Memcpy,
    Sync,
    EventRecord,
    EventQuery,
    StreamWait,
    Alloc,
    Free,
    /// A stream starts being captured into a CUDA graph: work submitted to it (and to streams
    /// that join it through events) is recorded into the graph, not run.
    CaptureBegin,
    /// The capture ends; the graph is written through the out-pointer.
    CaptureEnd,
    /// A captured graph (argument 1) becomes an executable graph (written through the
    /// out-pointer), what a graph launch then runs.
    GraphInstantiate,
    /// NIXL: a remote agent's descriptor list prepared (`prepXferDlist` with an agent name):
    /// the list handle is written through the out-pointer.
    KvPrepare,
    /// NIXL: a transfer request made (`createXferReq` naming the remote agent, or
    /// `makeXferReq` from prepared lists): the request handle through the out-pointer.
    KvCreate,
    /// NIXL: a request posted (`postXferReq(req)`); it returns the first status.
    KvPost,
    /// NIXL: a request's status polled (`getXferStatus(req)`); in progress until it is not.
    KvStatus,
    /// NIXL: a request released (`releaseXferReq(req)`).
    KvRelease,
    /// NIXL: a handshake with a remote agent (`makeConnection(agent)`, `loadRemoteMD`).
    KvHandshake,
    /// A user-defined probe with no meaning to the analysis (timed and counted only).
    Other,
}

/// What a collective or point-to-point call does, across libraries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommOp {
    AllReduce,
    AllGather,
    ReduceScatter,
    Broadcast,
    Reduce,
    AllToAll,
    Gather,
    Scatter,
    Barrier,
    Send,
    Recv,
}

impl CommOp {
    /// Short human name ("all-reduce").
    pub const fn label(self) -> &'static str {
        match self {
            AllReduce => "all-reduce",
            AllGather => "all-gather",
            ReduceScatter => "reduce-scatter",
            Broadcast => "broadcast",
            Reduce => "reduce",
            AllToAll => "all-to-all",
            Gather => "gather",
            Scatter => "scatter",
            Barrier => "barrier",
            Send => "send",
            Recv => "recv",
        }
    }

    /// Whether no member can return before every member has arrived (every member's
    /// result depends on every member's input): all-reduce, all-gather, reduce-scatter,
    /// all-to-all, barrier. Rooted ops and point-to-point can return early on some ranks.
    pub const fn needs_every_rank(self) -> bool {
        matches!(
            self,
            AllReduce | AllGather | ReduceScatter | AllToAll | Barrier
        )
    }
}

/// Which calls a synchronising call waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncScope {
    Stream,
    Event,
    Device,
}

/// Where the interesting arguments are (slots, or `NO_SLOT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// Element count (NCCL) or byte count (copies, allocations: see `count_is_bytes`).
    pub count: u8,
    /// ncclDataType_t.
    pub dtype: u8,
    /// ncclRedOp_t.
    pub op: u8,
    /// Root (rooted collectives) or peer (send/recv).
    pub peer: u8,
    /// Communicator handle.
    pub comm: u8,
    /// Stream handle.
    pub stream: u8,
    /// Event handle.
    pub event: u8,
    /// Out-pointer written by the call (new communicator, allocated address).
    pub out: u8,
    /// Pointer argument to read a word through at entry, and the word index
    /// (e.g. the stream inside a launch config struct).
    pub deref: u8,
    pub deref_word: u8,
    /// `count` is already in bytes.
    pub count_is_bytes: bool,
    /// Rank count and rank as plain integer arguments (ncclCommInitRank*).
    pub nranks_arg: u8,
    pub rank_arg: u8,
    /// The function takes an `ncclUniqueId` by value.
    pub unique_id: bool,
    /// The communicator is the word the deref argument points at (Gloo: the options object
    /// holds its `std::shared_ptr<gloo::Context>` first), not an argument.
    pub comm_is_deref: bool,
    /// What a collective or point-to-point call does, whatever the library calls it.
    pub comm_op: Option<CommOp>,
    /// The deref argument is a `std::string const&` (captured hashed, see `call::C_STR`).
    pub deref_is_str: bool,
    /// Returns of 1 ("in progress") are not sent (see `call::C_SKIP_RET1`).
    pub skip_in_progress: bool,
    /// The element type when the function fixes it (a C++ template instance such as
    /// `allreduce<float>`), as an `ncclDataType_t` code; `NO_SLOT` when it does not.
    pub fixed_dtype: u8,
    /// The count is a C `int` (the register's upper half is not part of it).
    pub count_is_int: bool,
}

const R: Roles = Roles {
    count: N,
    dtype: N,
    op: N,
    peer: N,
    comm: N,
    stream: N,
    event: N,
    out: N,
    deref: N,
    deref_word: 0,
    count_is_bytes: false,
    nranks_arg: N,
    rank_arg: N,
    unique_id: false,
    comm_is_deref: false,
    comm_op: None,
    fixed_dtype: N,
    count_is_int: false,
    deref_is_str: false,
    skip_in_progress: false,
};

/// One traced function.
#[derive(Clone, Copy, Debug)]
pub struct FuncSpec {
    /// Stable id, equal to the index in [`FUNCS`].
    pub id: u16,
    /// Canonical name.
    pub name: &'static str,
    pub family: Family,
    pub kind: CallKind,
    /// Every exported name to probe (aliases at the same address are probed once).
    pub symbols: &'static [&'static str],
    pub roles: Roles,
    /// Probed at entry only, never with a return probe (a user probe placed inside a
    /// function: the return address is not on top of the stack there).
    pub entry_only: bool,
}

macro_rules! funcs {
    ($( $id:literal $const:ident $name:literal $fam:ident $kind:ident [$($sym:literal),*] { $($role:ident : $v:expr),* } )*) => {
        /// The id of every built-in function by name, for the few places that must single
        /// one out (prefer a role or kind of the table where one says the same).
        pub mod id {
            $( pub const $const: super::FuncId = $id; )*
        }

        /// Every traced function, indexed by id.
        pub const FUNCS: &[FuncSpec] = &[
            $( FuncSpec {
                id: $id,
                name: $name,
                family: Family::$fam,
                kind: CallKind::$kind,
                symbols: &[$($sym),*],
                roles: Roles { $($role: $v,)* ..R },
                entry_only: false,
            }, )*
        ];
    };
}

use CommOp::*;

funcs! {
    // ---- NCCL (and RCCL) ----
    0 NCCL_ALL_REDUCE "ncclAllReduce" Nccl Collective ["ncclAllReduce", "pncclAllReduce"] { count: 2, dtype: 3, op: 4, comm: 5, stream: 6, comm_op: Some(AllReduce) }
    1 NCCL_ALL_GATHER "ncclAllGather" Nccl Collective ["ncclAllGather", "pncclAllGather"] { count: 2, dtype: 3, comm: 4, stream: 5, comm_op: Some(AllGather) }
    2 NCCL_REDUCE_SCATTER "ncclReduceScatter" Nccl Collective ["ncclReduceScatter", "pncclReduceScatter"] { count: 2, dtype: 3, op: 4, comm: 5, stream: 6, comm_op: Some(ReduceScatter) }
    3 NCCL_BROADCAST "ncclBroadcast" Nccl Collective ["ncclBroadcast", "pncclBroadcast"] { count: 2, dtype: 3, peer: 4, comm: 5, stream: 6, comm_op: Some(Broadcast) }
    4 NCCL_BCAST "ncclBcast" Nccl Collective ["ncclBcast", "pncclBcast"] { count: 1, dtype: 2, peer: 3, comm: 4, stream: 5, comm_op: Some(Broadcast) }
    5 NCCL_REDUCE "ncclReduce" Nccl Collective ["ncclReduce", "pncclReduce"] { count: 2, dtype: 3, op: 4, peer: 5, comm: 6, stream: 7, comm_op: Some(Reduce) }
    6 NCCL_ALL_TO_ALL "ncclAlltoAll" Nccl Collective ["ncclAlltoAll", "pncclAlltoAll"] { count: 2, dtype: 3, comm: 4, stream: 5, comm_op: Some(AllToAll) }
    7 NCCL_GATHER "ncclGather" Nccl Collective ["ncclGather", "pncclGather"] { count: 2, dtype: 3, peer: 4, comm: 5, stream: 6, comm_op: Some(Gather) }
    8 NCCL_SCATTER "ncclScatter" Nccl Collective ["ncclScatter", "pncclScatter"] { count: 2, dtype: 3, peer: 4, comm: 5, stream: 6, comm_op: Some(Scatter) }
    9 NCCL_SEND "ncclSend" Nccl P2p ["ncclSend", "pncclSend"] { count: 1, dtype: 2, peer: 3, comm: 4, stream: 5, comm_op: Some(Send) }
    10 NCCL_RECV "ncclRecv" Nccl P2p ["ncclRecv", "pncclRecv"] { count: 1, dtype: 2, peer: 3, comm: 4, stream: 5, comm_op: Some(Recv) }
    11 NCCL_GROUP_START "ncclGroupStart" Nccl GroupStart ["ncclGroupStart", "pncclGroupStart"] {}
    12 NCCL_GROUP_END "ncclGroupEnd" Nccl GroupEnd ["ncclGroupEnd", "pncclGroupEnd"] {}
    13 NCCL_COMM_INIT_RANK "ncclCommInitRank" Nccl CommInit ["ncclCommInitRank", "pncclCommInitRank"] { out: 0, nranks_arg: 1, rank_arg: 2, unique_id: true }
    14 NCCL_COMM_INIT_RANK_CONFIG "ncclCommInitRankConfig" Nccl CommInit ["ncclCommInitRankConfig", "pncclCommInitRankConfig"] { out: 0, nranks_arg: 1, rank_arg: 2, unique_id: true }
    15 NCCL_COMM_INIT_ALL "ncclCommInitAll" Nccl CommInitAll ["ncclCommInitAll", "pncclCommInitAll"] { out: 0, nranks_arg: 1 }
    16 NCCL_COMM_SPLIT "ncclCommSplit" Nccl CommSplit ["ncclCommSplit", "pncclCommSplit"] { comm: 0, out: 3 }
    17 NCCL_COMM_DESTROY "ncclCommDestroy" Nccl CommEnd ["ncclCommDestroy", "pncclCommDestroy"] { comm: 0 }
    18 NCCL_COMM_ABORT "ncclCommAbort" Nccl CommEnd ["ncclCommAbort", "pncclCommAbort"] { comm: 0 }
    // ---- CUDA runtime ----
    // cudaLaunchKernel(func, dim3 grid, dim3 block, args, sharedMem, stream): each dim3 takes two registers.
    19 CUDA_LAUNCH_KERNEL "cudaLaunchKernel" CudaRuntime Launch ["cudaLaunchKernel", "cudaLaunchKernel_ptsz"] { stream: 7 }
    // cudaLaunchKernelExC(const cudaLaunchConfig_t*, func, args): stream at byte 32 of the config.
    20 CUDA_LAUNCH_KERNEL_EXC "cudaLaunchKernelExC" CudaRuntime Launch ["cudaLaunchKernelExC", "cudaLaunchKernelExC_ptsz"] { deref: 0, deref_word: 4 }
    21 CUDA_GRAPH_LAUNCH "cudaGraphLaunch" CudaRuntime GraphLaunch ["cudaGraphLaunch", "cudaGraphLaunch_ptsz"] { stream: 1 }
    22 CUDA_MEMCPY_ASYNC "cudaMemcpyAsync" CudaRuntime Memcpy ["cudaMemcpyAsync", "cudaMemcpyAsync_ptsz"] { count: 2, count_is_bytes: true, stream: 4 }
    23 CUDA_MEMCPY "cudaMemcpy" CudaRuntime Memcpy ["cudaMemcpy", "cudaMemcpy_ptds"] { count: 2, count_is_bytes: true }
    24 CUDA_STREAM_SYNCHRONIZE "cudaStreamSynchronize" CudaRuntime Sync ["cudaStreamSynchronize", "cudaStreamSynchronize_ptsz"] { stream: 0 }
    25 CUDA_DEVICE_SYNCHRONIZE "cudaDeviceSynchronize" CudaRuntime Sync ["cudaDeviceSynchronize"] {}
    26 CUDA_EVENT_SYNCHRONIZE "cudaEventSynchronize" CudaRuntime Sync ["cudaEventSynchronize"] { event: 0 }
    27 CUDA_EVENT_RECORD "cudaEventRecord" CudaRuntime EventRecord ["cudaEventRecord", "cudaEventRecord_ptsz"] { event: 0, stream: 1 }
    28 CUDA_EVENT_QUERY "cudaEventQuery" CudaRuntime EventQuery ["cudaEventQuery"] { event: 0 }
    29 CUDA_STREAM_WAIT_EVENT "cudaStreamWaitEvent" CudaRuntime StreamWait ["cudaStreamWaitEvent", "cudaStreamWaitEvent_ptsz"] { stream: 0, event: 1 }
    30 CUDA_MALLOC "cudaMalloc" CudaRuntime Alloc ["cudaMalloc"] { out: 0, count: 1, count_is_bytes: true }
    31 CUDA_FREE "cudaFree" CudaRuntime Free ["cudaFree"] {}
    32 CUDA_MALLOC_ASYNC "cudaMallocAsync" CudaRuntime Alloc ["cudaMallocAsync", "cudaMallocAsync_ptsz"] { out: 0, count: 1, count_is_bytes: true, stream: 2 }
    33 CUDA_FREE_ASYNC "cudaFreeAsync" CudaRuntime Free ["cudaFreeAsync", "cudaFreeAsync_ptsz"] { stream: 1 }
    34 CUDA_MALLOC_HOST "cudaMallocHost" CudaRuntime Alloc ["cudaMallocHost"] { out: 0, count: 1, count_is_bytes: true }
    // ---- CUDA driver ----
    // cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra)
    35 CU_LAUNCH_KERNEL "cuLaunchKernel" CudaDriver Launch ["cuLaunchKernel", "cuLaunchKernel_ptsz"] { stream: 8 }
    // cuLaunchKernelEx(const CUlaunchConfig*, f, params, extra): stream at byte 32 of the config.
    36 CU_LAUNCH_KERNEL_EX "cuLaunchKernelEx" CudaDriver Launch ["cuLaunchKernelEx", "cuLaunchKernelEx_ptsz"] { deref: 0, deref_word: 4 }
    37 CU_GRAPH_LAUNCH "cuGraphLaunch" CudaDriver GraphLaunch ["cuGraphLaunch", "cuGraphLaunch_ptsz"] { stream: 1 }
    38 CU_STREAM_SYNCHRONIZE "cuStreamSynchronize" CudaDriver Sync ["cuStreamSynchronize", "cuStreamSynchronize_ptsz"] { stream: 0 }
    39 CU_EVENT_SYNCHRONIZE "cuEventSynchronize" CudaDriver Sync ["cuEventSynchronize"] { event: 0 }
    40 CU_EVENT_QUERY "cuEventQuery" CudaDriver EventQuery ["cuEventQuery"] { event: 0 }
    41 CU_CTX_SYNCHRONIZE "cuCtxSynchronize" CudaDriver Sync ["cuCtxSynchronize"] {}
    42 CU_MEM_ALLOC "cuMemAlloc" CudaDriver Alloc ["cuMemAlloc_v2"] { out: 0, count: 1, count_is_bytes: true }
    43 CU_MEM_FREE "cuMemFree" CudaDriver Free ["cuMemFree_v2"] {}
    // ---- HIP runtime (libamdhip64) ----
    // hipLaunchKernel(func, dim3 grid, dim3 block, args, sharedMem, stream), as CUDA's.
    44 HIP_LAUNCH_KERNEL "hipLaunchKernel" Hip Launch ["hipLaunchKernel", "hipLaunchKernel_spt"] { stream: 7 }
    // hipModuleLaunchKernel's stream is its 9th argument (the third stack word).
    45 HIP_MODULE_LAUNCH_KERNEL "hipModuleLaunchKernel" Hip Launch ["hipModuleLaunchKernel"] { stream: 8 }
    46 HIP_EXT_LAUNCH_KERNEL "hipExtLaunchKernel" Hip Launch ["hipExtLaunchKernel"] { stream: 7 }
    47 HIP_GRAPH_LAUNCH "hipGraphLaunch" Hip GraphLaunch ["hipGraphLaunch", "hipGraphLaunch_spt"] { stream: 1 }
    48 HIP_MEMCPY_ASYNC "hipMemcpyAsync" Hip Memcpy ["hipMemcpyAsync", "hipMemcpyAsync_spt"] { count: 2, count_is_bytes: true, stream: 4 }
    49 HIP_STREAM_SYNCHRONIZE "hipStreamSynchronize" Hip Sync ["hipStreamSynchronize", "hipStreamSynchronize_spt"] { stream: 0 }
    50 HIP_DEVICE_SYNCHRONIZE "hipDeviceSynchronize" Hip Sync ["hipDeviceSynchronize"] {}
    51 HIP_EVENT_SYNCHRONIZE "hipEventSynchronize" Hip Sync ["hipEventSynchronize"] { event: 0 }
    52 HIP_MALLOC "hipMalloc" Hip Alloc ["hipMalloc"] { out: 0, count: 1, count_is_bytes: true }
    53 HIP_FREE "hipFree" Hip Free ["hipFree"] {}
    // ---- MPI (libmpi; the PMPI_ profiling names share the address and are probed once) ----
    // Datatypes and ops are handles here, not NCCL's enums: no dtype/op roles.
    54 MPI_ALLREDUCE "MPI_Allreduce" Mpi Collective ["MPI_Allreduce", "PMPI_Allreduce"] { count: 2, comm: 5, comm_op: Some(AllReduce) }
    55 MPI_ALLGATHER "MPI_Allgather" Mpi Collective ["MPI_Allgather", "PMPI_Allgather"] { count: 1, comm: 6, comm_op: Some(AllGather) }
    56 MPI_REDUCE_SCATTER_BLOCK "MPI_Reduce_scatter_block" Mpi Collective ["MPI_Reduce_scatter_block", "PMPI_Reduce_scatter_block"] { count: 2, comm: 5, comm_op: Some(ReduceScatter) }
    57 MPI_REDUCE_SCATTER "MPI_Reduce_scatter" Mpi Collective ["MPI_Reduce_scatter", "PMPI_Reduce_scatter"] { comm: 5, comm_op: Some(ReduceScatter) }
    58 MPI_BCAST "MPI_Bcast" Mpi Collective ["MPI_Bcast", "PMPI_Bcast"] { count: 1, peer: 3, comm: 4, comm_op: Some(Broadcast) }
    59 MPI_REDUCE "MPI_Reduce" Mpi Collective ["MPI_Reduce", "PMPI_Reduce"] { count: 2, peer: 5, comm: 6, comm_op: Some(Reduce) }
    60 MPI_ALLTOALL "MPI_Alltoall" Mpi Collective ["MPI_Alltoall", "PMPI_Alltoall"] { count: 1, comm: 6, comm_op: Some(AllToAll) }
    61 MPI_BARRIER "MPI_Barrier" Mpi Collective ["MPI_Barrier", "PMPI_Barrier"] { comm: 0, comm_op: Some(Barrier) }
    62 MPI_SEND "MPI_Send" Mpi P2p ["MPI_Send", "PMPI_Send"] { count: 1, peer: 3, comm: 5, comm_op: Some(Send) }
    63 MPI_RECV "MPI_Recv" Mpi P2p ["MPI_Recv", "PMPI_Recv"] { count: 1, peer: 3, comm: 5, comm_op: Some(Recv) }
    // ---- Gloo (libtorch_cpu): C++ functions, matched by demangled name without parameters
    // (`gloo::allreduce(gloo::AllreduceOptions const&)` is `gloo::allreduce`). Each takes an
    // options object that holds its process group's `gloo::Context` first: that context is
    // the communicator, and its `rank` and `size` are read through it. ----
    64 GLOO_ALLREDUCE "gloo::allreduce" Gloo Collective ["gloo::allreduce"] { deref: 0, comm_is_deref: true, comm_op: Some(AllReduce) }
    65 GLOO_ALLGATHER "gloo::allgather" Gloo Collective ["gloo::allgather"] { deref: 0, comm_is_deref: true, comm_op: Some(AllGather) }
    66 GLOO_ALLGATHERV "gloo::allgatherv" Gloo Collective ["gloo::allgatherv"] { deref: 0, comm_is_deref: true, comm_op: Some(AllGather) }
    67 GLOO_BROADCAST "gloo::broadcast" Gloo Collective ["gloo::broadcast"] { deref: 0, comm_is_deref: true, comm_op: Some(Broadcast) }
    68 GLOO_REDUCE "gloo::reduce" Gloo Collective ["gloo::reduce"] { deref: 0, comm_is_deref: true, comm_op: Some(Reduce) }
    69 GLOO_BARRIER "gloo::barrier" Gloo Collective ["gloo::barrier"] { deref: 0, comm_is_deref: true, comm_op: Some(Barrier) }
    70 GLOO_ALLTOALL "gloo::alltoall" Gloo Collective ["gloo::alltoall"] { deref: 0, comm_is_deref: true, comm_op: Some(AllToAll) }
    71 GLOO_ALLTOALLV "gloo::alltoallv" Gloo Collective ["gloo::alltoallv"] { deref: 0, comm_is_deref: true, comm_op: Some(AllToAll) }
    72 GLOO_GATHER "gloo::gather" Gloo Collective ["gloo::gather"] { deref: 0, comm_is_deref: true, comm_op: Some(Gather) }
    73 GLOO_SCATTER "gloo::scatter" Gloo Collective ["gloo::scatter"] { deref: 0, comm_is_deref: true, comm_op: Some(Scatter) }
    // ---- MPI set-up, derived communicators and non-blocking point-to-point ----
    74 MPI_INIT "MPI_Init" Mpi Other ["MPI_Init", "PMPI_Init"] {}
    75 MPI_INIT_THREAD "MPI_Init_thread" Mpi Other ["MPI_Init_thread", "PMPI_Init_thread"] {}
    // MPI_Comm_rank(comm, int *rank): the rank is read back through the out-pointer.
    76 MPI_COMM_RANK "MPI_Comm_rank" Mpi Other ["MPI_Comm_rank", "PMPI_Comm_rank"] { out: 1 }
    77 MPI_COMM_SIZE "MPI_Comm_size" Mpi Other ["MPI_Comm_size", "PMPI_Comm_size"] { out: 1 }
    // MPI_Comm_split(comm, color, key, MPI_Comm *newcomm): as ncclCommSplit's arguments.
    78 MPI_COMM_SPLIT "MPI_Comm_split" Mpi CommSplit ["MPI_Comm_split", "PMPI_Comm_split"] { comm: 0, out: 3 }
    // MPI_Comm_dup(comm, MPI_Comm *newcomm): a split with one color for every rank.
    79 MPI_COMM_DUP "MPI_Comm_dup" Mpi CommSplit ["MPI_Comm_dup", "PMPI_Comm_dup"] { comm: 0, out: 1 }
    80 MPI_ISEND "MPI_Isend" Mpi P2p ["MPI_Isend", "PMPI_Isend"] { count: 1, peer: 3, comm: 5, comm_op: Some(Send) }
    81 MPI_IRECV "MPI_Irecv" Mpi P2p ["MPI_Irecv", "PMPI_Irecv"] { count: 1, peer: 3, comm: 5, comm_op: Some(Recv) }
    82 MPI_WAIT "MPI_Wait" Mpi Other ["MPI_Wait", "PMPI_Wait"] {}
    83 MPI_WAITALL "MPI_Waitall" Mpi Other ["MPI_Waitall", "PMPI_Waitall"] {}
    // ---- vLLM's custom all-reduce (`vllm::CustomAllreduce`, in _C_stable_libtorch): member
    // functions matched by demangled name without parameters. `this` (slot 0) is the
    // communicator: it holds `int rank_; int world_size_;` first. Then (stream, input,
    // output, int size, int threads, int block_limit); `size` counts elements of the
    // template's type, except allgather's, which counts bytes. ----
    84 VLLM_ALLREDUCE_F32 "vllm::CustomAllreduce::allreduce<float>" Vllm Collective ["vllm::CustomAllreduce::allreduce<float>"] { comm: 0, stream: 1, count: 4, count_is_int: true, fixed_dtype: 7, comm_op: Some(AllReduce) }
    85 VLLM_ALLREDUCE_F16 "vllm::CustomAllreduce::allreduce<__half>" Vllm Collective ["vllm::CustomAllreduce::allreduce<__half>"] { comm: 0, stream: 1, count: 4, count_is_int: true, fixed_dtype: 6, comm_op: Some(AllReduce) }
    86 VLLM_ALLREDUCE_BF16 "vllm::CustomAllreduce::allreduce<__nv_bfloat16>" Vllm Collective ["vllm::CustomAllreduce::allreduce<__nv_bfloat16>"] { comm: 0, stream: 1, count: 4, count_is_int: true, fixed_dtype: 9, comm_op: Some(AllReduce) }
    87 VLLM_REDUCE_SCATTER_F32 "vllm::CustomAllreduce::reduce_scatter<float>" Vllm Collective ["vllm::CustomAllreduce::reduce_scatter<float>"] { comm: 0, stream: 1, count: 4, count_is_int: true, fixed_dtype: 7, comm_op: Some(ReduceScatter) }
    88 VLLM_REDUCE_SCATTER_F16 "vllm::CustomAllreduce::reduce_scatter<__half>" Vllm Collective ["vllm::CustomAllreduce::reduce_scatter<__half>"] { comm: 0, stream: 1, count: 4, count_is_int: true, fixed_dtype: 6, comm_op: Some(ReduceScatter) }
    89 VLLM_REDUCE_SCATTER_BF16 "vllm::CustomAllreduce::reduce_scatter<__nv_bfloat16>" Vllm Collective ["vllm::CustomAllreduce::reduce_scatter<__nv_bfloat16>"] { comm: 0, stream: 1, count: 4, count_is_int: true, fixed_dtype: 9, comm_op: Some(ReduceScatter) }
    90 VLLM_ALLGATHER "vllm::CustomAllreduce::allgather" Vllm Collective ["vllm::CustomAllreduce::allgather"] { comm: 0, stream: 1, count: 4, count_is_int: true, count_is_bytes: true, comm_op: Some(AllGather) }
    // register_graph_buffers(handles, offsets): after a CUDA-graph capture, every rank
    // registers the buffers its captured all-reduces use (collective over the group, on the
    // host, not on a stream).
    91 VLLM_REGISTER_GRAPH_BUFFERS "vllm::CustomAllreduce::register_graph_buffers" Vllm Other ["vllm::CustomAllreduce::register_graph_buffers"] { comm: 0 }
    // ---- CUDA graph capture (CUDA runtime): which collectives and launches a graph holds ----
    // cudaStreamBeginCapture(stream, mode); cudaStreamEndCapture(stream, cudaGraph_t *graph);
    // cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags)
    // and its WithFlags twin (same arguments).
    92 CUDA_STREAM_BEGIN_CAPTURE "cudaStreamBeginCapture" CudaRuntime CaptureBegin ["cudaStreamBeginCapture", "cudaStreamBeginCapture_ptsz"] { stream: 0 }
    93 CUDA_STREAM_END_CAPTURE "cudaStreamEndCapture" CudaRuntime CaptureEnd ["cudaStreamEndCapture", "cudaStreamEndCapture_ptsz"] { stream: 0, out: 1 }
    94 CUDA_GRAPH_INSTANTIATE "cudaGraphInstantiate" CudaRuntime GraphInstantiate ["cudaGraphInstantiate"] { out: 0 }
    95 CUDA_GRAPH_INSTANTIATE_WITH_FLAGS "cudaGraphInstantiateWithFlags" CudaRuntime GraphInstantiate ["cudaGraphInstantiateWithFlags"] { out: 0 }
    // ---- NIXL (libnixl 1.x, nixlAgent members; mangled names, as overloads differ in where
    // their arguments sit). `this` is slot 0; a `std::string const&` agent name is captured
    // hashed (deref_is_str). The request handle of post/status/release is argument 1. ----
    // prepXferDlist(const std::string& agent, const nixlDescList<nixlBasicDesc|nixlStrideDesc>&,
    // nixlDlistH*& out, opts)
    96 NIXL_PREP_XFER_DLIST "nixlAgent::prepXferDlist" Nixl KvPrepare ["_ZNK9nixlAgent13prepXferDlistERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERK12nixlDescListI13nixlBasicDescERP10nixlDlistHPK21nixlAgentOptionalArgs", "_ZNK9nixlAgent13prepXferDlistERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERK12nixlDescListI14nixlStrideDescERP10nixlDlistHPK21nixlAgentOptionalArgs"] { deref: 1, deref_is_str: true, out: 3 }
    // createXferReq(const nixl_xfer_op_t&, local descs, remote descs, const std::string& agent,
    // nixlXferReqH*& out, opts)
    97 NIXL_CREATE_XFER_REQ "nixlAgent::createXferReq" Nixl KvCreate ["_ZNK9nixlAgent13createXferReqERK14nixl_xfer_op_tRK12nixlDescListI13nixlBasicDescES7_RKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERP12nixlXferReqHPK21nixlAgentOptionalArgs"] { deref: 4, deref_is_str: true, out: 5 }
    // makeXferReq(nixl_xfer_op_t op, const nixlDlistH& local, std::span<const int> local_idx
    // (two registers: the count is slot 4), const nixlDlistH& remote, std::span remote_idx
    // (stack slots 6-7), nixlXferReqH*& out (stack slot 8), opts). A prepared list starts
    // with its remote agent's name (`std::string remoteAgent`, first in nixlDlistH in NIXL
    // 1.5.1, read by hand from a live handle): read as a string through the remote list.
    98 NIXL_MAKE_XFER_REQ "nixlAgent::makeXferReq" Nixl KvCreate ["_ZNK9nixlAgent11makeXferReqE14nixl_xfer_op_tRK10nixlDlistHSt4spanIKiLm18446744073709551615EES3_S6_RP12nixlXferReqHPK21nixlAgentOptionalArgs"] { op: 1, count: 4, peer: 5, deref: 5, deref_is_str: true, out: 8 }
    // makeXferReq(const nixl_xfer_op_t&, const nixlDlistH* local, const std::vector<int>&,
    // const nixlDlistH* remote, const std::vector<int>&, nixlXferReqH*& out (stack slot 6), opts)
    99 NIXL_MAKE_XFER_REQ_V "nixlAgent::makeXferReq(vector)" Nixl KvCreate ["_ZNK9nixlAgent11makeXferReqERK14nixl_xfer_op_tPK10nixlDlistHRKSt6vectorIiSaIiEES5_SA_RP12nixlXferReqHPK21nixlAgentOptionalArgs"] { peer: 4, deref: 4, deref_is_str: true, out: 6 }
    100 NIXL_POST_XFER_REQ "nixlAgent::postXferReq" Nixl KvPost ["_ZNK9nixlAgent11postXferReqEP12nixlXferReqHPK21nixlAgentOptionalArgs"] {}
    // Polled until the transfer is not in progress: only the final status is sent.
    101 NIXL_GET_XFER_STATUS "nixlAgent::getXferStatus" Nixl KvStatus ["_ZNK9nixlAgent13getXferStatusEP12nixlXferReqH"] { skip_in_progress: true }
    102 NIXL_RELEASE_XFER_REQ "nixlAgent::releaseXferReq" Nixl KvRelease ["_ZNK9nixlAgent14releaseXferReqEP12nixlXferReqH"] {}
    // makeConnection(const std::string& agent, opts); loadRemoteMD(const std::string& md,
    // std::string& agent_out): the metadata exchange, timed.
    103 NIXL_MAKE_CONNECTION "nixlAgent::makeConnection" Nixl KvHandshake ["_ZN9nixlAgent14makeConnectionERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEEPK21nixlAgentOptionalArgs"] { deref: 1, deref_is_str: true }
    104 NIXL_LOAD_REMOTE_MD "nixlAgent::loadRemoteMD" Nixl KvHandshake ["_ZN9nixlAgent12loadRemoteMDERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERS5_"] {}
}

impl FuncSpec {
    /// What a synchronising call waits for: its stream, its event, or the whole device.
    pub fn sync_scope(&self) -> SyncScope {
        if self.roles.stream != N {
            SyncScope::Stream
        } else if self.roles.event != N {
            SyncScope::Event
        } else {
            SyncScope::Device
        }
    }

    /// Whether the calling thread waits in this call for work on the device: syncs, event
    /// queries, and copies that take no stream (synchronous copies).
    pub fn waits_for_device(&self) -> bool {
        match self.kind {
            CallKind::Sync | CallKind::EventQuery => true,
            CallKind::Memcpy => self.roles.stream == N,
            _ => false,
        }
    }

    /// The name ops of this call are shown under: NCCL's and vLLM's collectives by what they
    /// do ("all-reduce"; the backend says whose), every other library's by the function's own name ("MPI_Allreduce").
    pub fn op_label(&self) -> &'static str {
        match (self.family, self.roles.comm_op) {
            (Family::Nccl | Family::Vllm, Some(op)) => op.label(),
            _ => self.name,
        }
    }
}

/// A function id (index into [`FUNCS`]).
pub type FuncId = u16;

/// Roles of a function whose arguments mean nothing to the analysis (user probes).
pub const NO_ROLES: Roles = R;

/// The first function id of the user-defined probes (`--probe`); ids below are [`FUNCS`].
pub const USER_BASE: FuncId = 1024;
/// Most user-defined probes in one run.
pub const MAX_USER: usize = 64;

#[cfg(feature = "user")]
mod user_registry {
    use super::FuncSpec;
    use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    static PTR: AtomicPtr<FuncSpec> = AtomicPtr::new(core::ptr::null_mut());
    static LEN: AtomicUsize = AtomicUsize::new(0);

    /// Installs the run's user probes (once; later calls are refused with `false`).
    pub fn register(specs: &'static [FuncSpec]) -> bool {
        let ok = PTR
            .compare_exchange(
                core::ptr::null_mut(),
                specs.as_ptr() as *mut FuncSpec,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if ok {
            LEN.store(specs.len(), Ordering::Release);
        }
        ok
    }

    pub fn specs() -> &'static [FuncSpec] {
        let len = LEN.load(Ordering::Acquire);
        let ptr = PTR.load(Ordering::Acquire);
        if ptr.is_null() || len == 0 {
            return &[];
        }
        // SAFETY: `ptr` and `len` come from one `&'static [FuncSpec]` given to `register`
        // (LEN is stored after PTR and read with Acquire, so a non-zero LEN implies PTR).
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }
}

/// Installs the user-defined probes of this run: `specs[i]` must have id `USER_BASE + i`.
/// Once per process; a second call is refused (returns false).
#[cfg(feature = "user")]
pub fn register_user(specs: &'static [FuncSpec]) -> bool {
    user_registry::register(specs)
}

/// The user-defined probes registered in this process (none on the BPF side).
pub fn user_specs() -> &'static [FuncSpec] {
    #[cfg(feature = "user")]
    {
        user_registry::specs()
    }
    #[cfg(not(feature = "user"))]
    {
        &[]
    }
}

/// The spec of a function id, if it is one (built-in, or a registered user probe).
pub fn spec(id: FuncId) -> Option<&'static FuncSpec> {
    if id < USER_BASE {
        FUNCS.get(id as usize)
    } else {
        user_specs().get((id - USER_BASE) as usize)
    }
}

/// The function that a symbol name belongs to.
pub fn by_symbol(sym: &str) -> Option<&'static FuncSpec> {
    FUNCS.iter().find(|f| f.symbols.contains(&sym))
}

/// Size in bytes of an `ncclDataType_t` (None for unknown values).
pub const fn nccl_dtype_size(dtype: u64) -> Option<u64> {
    match dtype {
        0 | 1 => Some(1),     // int8, uint8
        2 | 3 | 7 => Some(4), // int32, uint32, float32
        4 | 5 | 8 => Some(8), // int64, uint64, float64
        6 | 9 => Some(2),     // float16, bfloat16
        10 | 11 => Some(1),   // fp8 e4m3, e5m2
        _ => None,
    }
}

/// Name of an `ncclDataType_t`.
pub const fn nccl_dtype_name(dtype: u64) -> &'static str {
    match dtype {
        0 => "int8",
        1 => "uint8",
        2 => "int32",
        3 => "uint32",
        4 => "int64",
        5 => "uint64",
        6 => "float16",
        7 => "float32",
        8 => "float64",
        9 => "bfloat16",
        10 => "fp8e4m3",
        11 => "fp8e5m2",
        _ => "unknown",
    }
}

/// Name of an `ncclRedOp_t`.
pub const fn nccl_op_name(op: u64) -> &'static str {
    match op {
        0 => "sum",
        1 => "prod",
        2 => "max",
        3 => "min",
        4 => "avg",
        _ => "custom",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_indices_and_symbols_unique() {
        for (i, f) in FUNCS.iter().enumerate() {
            assert_eq!(
                f.id as usize, i,
                "{} has id {} at index {}",
                f.name, f.id, i
            );
            assert!(!f.symbols.is_empty());
        }
        for f in FUNCS {
            for s in f.symbols {
                assert_eq!(
                    by_symbol(s).map(|g| g.id),
                    Some(f.id),
                    "symbol {s} is listed twice"
                );
            }
        }
    }

    #[test]
    fn cookie_round_trips() {
        let c = crate::call::Cookie::new(43, 4095, 5, 3, 0, 4, crate::call::C_UID);
        assert_eq!(c.func(), 43);
        assert_eq!(c.lib_slot(), 4095);
        assert_eq!(c.comm_slot(), 5);
        assert_eq!(c.out_slot(), 3);
        assert_eq!(c.deref_slot(), 0);
        assert_eq!(c.deref_word(), 4);
        assert_eq!(c.flags(), crate::call::C_UID);
    }
}
