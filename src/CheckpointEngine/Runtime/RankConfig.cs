using System.Collections;
using System.Globalization;
using System.Net;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Runtime;

/// <summary>
/// Everything a rank process takes from its environment, read once at the composition root (see
/// <see cref="FromEnvironment"/>): who it is among the parameter-server ranks in torchrun's convention
/// (<c>RANK</c>, <c>WORLD_SIZE</c>, <c>MASTER_ADDR</c>, <c>MASTER_PORT</c>, optionally <c>LOCAL_RANK</c>
/// and <c>LOCAL_WORLD_SIZE</c>), the shared secret every connection presents (<c>CKPT_ENGINE_TOKEN</c>),
/// and the <c>CKPT_ENGINE_*</c> settings of its device, network and buckets. Nothing below the root
/// reads the environment.
/// </summary>
public sealed record RankConfig
{
    public const string TokenVariable = "CKPT_ENGINE_TOKEN";
    public const string AllowNoTokenVariable = "CKPT_ENGINE_ALLOW_NO_TOKEN";
    public const string ConnectTimeoutVariable = "CKPT_ENGINE_CONNECT_TIMEOUT_S";
    public const string HostIdVariable = "CKPT_ENGINE_HOST_ID";
    public const string AdvertiseAddressVariable = "CKPT_ENGINE_ADVERTISE_ADDR";
    public const string NetDeviceVariable = "CKPT_ENGINE_NET_DEVICE";
    public const string DeviceIdVariable = "CKPT_ENGINE_DEVICE_ID";
    public const string SocketDirectoryVariable = "CKPT_ENGINE_SOCKET_DIR";
    public const string MaxBucketSizeVariable = "CKPT_ENGINE_MAX_BUCKET_SIZE_GB";
    public const string HostDeviceMemoryVariable = "CKPT_ENGINE_HOST_DEVICE_MEMORY_GB";
    public const string DeviceVariable = "CKPT_ENGINE_DEVICE";
    public const string RegistrationBudgetVariable = "CKPT_ENGINE_REGISTRATION_BUDGET_GB";
    public const string AllowDirsVariable = "CKPT_ENGINE_ALLOW_DIRS";
    public const string AllowEngineHostsVariable = "CKPT_ENGINE_ALLOW_ENGINE_HOSTS";
    public const string AllowEngineSocketsVariable = "CKPT_ENGINE_ALLOW_ENGINE_SOCKETS";
    public const string P2PTransportVariable = P2P.P2PTransports.Variable;

    public int Rank { get; init; }

    public int WorldSize { get; init; } = 1;

    public string MasterAddr { get; init; } = "127.0.0.1";

    /// <summary>Port of the rendezvous store on rank 0; 0 lets a single-rank world pick any free port.</summary>
    public int MasterPort { get; init; }

    public int LocalRank { get; init; }

    public int LocalWorldSize { get; init; } = 1;

    public string? Token { get; init; }

    /// <summary>
    /// Lets a world whose listeners other hosts reach run without <see cref="Token"/> (<c>CKPT_ENGINE_ALLOW_NO_TOKEN=1</c>
    /// or <c>--allow-no-token</c>); without it such a world refuses to start. A loopback world never needs it.
    /// </summary>
    public bool AllowNoToken { get; init; }

    /// <summary>How long to wait for the store and for every rank to join (<c>CKPT_ENGINE_CONNECT_TIMEOUT_S</c>, default 60 s).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Reads the torchrun variables from <paramref name="environment"/> (the process environment by
    /// default). Unset variables default to a single-rank world on loopback; set ones must be valid.
    /// </summary>
    public static RankConfig FromEnvironment(IDictionary? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariables();
        // Blank counts as unset (a shell's `export RANK=` must not read as an empty number).
        string? Get(string name) => Convert.ToString(environment[name], CultureInfo.InvariantCulture)?.Trim() is { Length: > 0 } v ? v : null;
        int Int(string name, int fallback, int min, int max, string? why = null)
        {
            var text = Get(name);
            if (text is null)
            {
                return fallback;
            }
            if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var v))
            {
                throw new CheckpointEngineException($"{name}={text} is not a whole number in [{min}, {max}]");
            }
            if (v < min || v > max)
            {
                throw new CheckpointEngineException($"{name}={text} is outside [{min}, {max}]{why}");
            }
            return v;
        }

        var world = Int("WORLD_SIZE", 1, 1, 1 << 20);
        var rank = Int("RANK", 0, 0, world - 1, $" (must be below WORLD_SIZE={world})");
        if (world > 1 && Get("MASTER_PORT") is null)
        {
            throw new CheckpointEngineException($"MASTER_PORT is not set; WORLD_SIZE={world} needs rank 0's rendezvous port");
        }
        var config = new RankConfig
        {
            Rank = rank,
            WorldSize = world,
            MasterAddr = Get("MASTER_ADDR") ?? "127.0.0.1",
            MasterPort = Int("MASTER_PORT", 0, world > 1 ? 1 : 0, 65535),
            LocalWorldSize = Int("LOCAL_WORLD_SIZE", world, 1, world, $" (cannot exceed WORLD_SIZE={world})"),
            Token = Get(TokenVariable),
            AllowNoToken = Get(AllowNoTokenVariable) switch
            {
                null or "0" => false,
                "1" => true,
                var v => throw new CheckpointEngineException($"{AllowNoTokenVariable}={v} is neither 1 nor 0"),
            },
            ConnectTimeout = TimeSpan.FromSeconds(Int(ConnectTimeoutVariable, 60, 1, 86_400)),
            HostId = Get(HostIdVariable),
            AdvertiseAddress = Get(AdvertiseAddressVariable) is { } advertise
                ? IPAddress.TryParse(advertise, out var address) ? address : throw new CheckpointEngineException($"{AdvertiseAddressVariable}={advertise} is not an IP address")
                : null,
            NetDevice = Get(NetDeviceVariable),
            SocketDirectory = Get(SocketDirectoryVariable),
            MaxBucketSize = GiB(MaxBucketSizeVariable) ?? Planning.BucketSizing.DefaultMaxBucketSize,
            HostDeviceMemory = GiB(HostDeviceMemoryVariable),
            Device = Get(DeviceVariable),
            RegistrationBudget = GiB(RegistrationBudgetVariable),
            AllowDirs = List(AllowDirsVariable, ':'),
            AllowEngineHosts = List(AllowEngineHostsVariable, ','),
            AllowEngineSockets = List(AllowEngineSocketsVariable, ':'),
            P2PTransport = P2P.P2PTransports.Parse(Get(P2PTransportVariable), P2PTransportVariable),
            RdmaDevices = Get(P2P.RdmaDevices.Variable) is { } devices ? (devices, P2P.RdmaDevices.Variable)
                : Get(P2P.RdmaDevices.NcclVariable) is { } hca ? (hca, P2P.RdmaDevices.NcclVariable) : null,
            UcxTlsSet = Get("UCX_TLS") is not null,
        };
        config = config with { LocalRank = Int("LOCAL_RANK", rank % config.LocalWorldSize, 0, config.LocalWorldSize - 1, $" (must be below LOCAL_WORLD_SIZE={config.LocalWorldSize})") };
        return config with { DeviceId = Get(DeviceIdVariable) is { } id ? DeviceIds.Fill(id, config.LocalRank, config.Rank) : null };

        // Colon-separated like PATH (directories, sockets), comma-separated for host names (IPv6 has colons).
        string[] List(string name, char separator) => Get(name)?.Split(separator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? [];

        long? GiB(string name) => Get(name) is not { } text
            ? null
            : double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var gb) && gb > 0 && double.IsFinite(gb) && gb < 1L << 33
                ? (long)(gb * (1L << 30))
                : throw new CheckpointEngineException($"{name}={text} is not a positive number of GiB");
    }

    /// <summary>Ranks with the same id share a host, and so shared memory (<c>CKPT_ENGINE_HOST_ID</c>; default: the machine's boot id and name).</summary>
    public string? HostId { get; init; }

    /// <summary>The address peers reach this rank on (<c>CKPT_ENGINE_ADVERTISE_ADDR</c>; default: the interface that routes to the store).</summary>
    public IPAddress? AdvertiseAddress { get; init; }

    /// <summary>The network device this rank's P2P reads go through (<c>CKPT_ENGINE_NET_DEVICE</c>; default: one per host).</summary>
    public string? NetDevice { get; init; }

    /// <summary>This rank's device id as the worker knows it (<c>CKPT_ENGINE_DEVICE_ID</c>, <c>{local_rank}</c> and <c>{rank}</c> filled in); null: the backend's own.</summary>
    public string? DeviceId { get; init; }

    /// <summary>Where worker sockets are made as files (<c>CKPT_ENGINE_SOCKET_DIR</c>); null: abstract sockets.</summary>
    public string? SocketDirectory { get; init; }

    /// <summary>Largest bucket of an update (<c>CKPT_ENGINE_MAX_BUCKET_SIZE_GB</c>, GiB, fractions allowed; default 8 GiB).</summary>
    public long MaxBucketSize { get; init; } = Planning.BucketSizing.DefaultMaxBucketSize;

    /// <summary>Memory the host backend's device reports free (<c>CKPT_ENGINE_HOST_DEVICE_MEMORY_GB</c>); null: half the available memory over the local ranks.</summary>
    public long? HostDeviceMemory { get; init; }

    /// <summary>The backend when no --device option is given (<c>CKPT_ENGINE_DEVICE</c>: host, cuda or auto).</summary>
    public string? Device { get; init; }

    /// <summary>
    /// Most host memory this rank's registered checkpoints may hold together (<c>CKPT_ENGINE_REGISTRATION_BUDGET_GB</c>,
    /// GiB, fractions allowed); null: <see cref="Memory.CheckpointRegistry.DefaultBudget"/>.
    /// </summary>
    public long? RegistrationBudget { get; init; }

    /// <summary>The only directories whose files the HTTP API registers (<c>CKPT_ENGINE_ALLOW_DIRS</c>, colon-separated); empty: any file this process can read.</summary>
    public IReadOnlyList<string> AllowDirs { get; init; } = [];

    /// <summary>Hosts an update's <c>update_url</c> may name besides loopback (<c>CKPT_ENGINE_ALLOW_ENGINE_HOSTS</c>, comma-separated; <c>*</c>: any).</summary>
    public IReadOnlyList<string> AllowEngineHosts { get; init; } = [];

    /// <summary>Unix sockets an update's <c>uds</c> may name although another user owns them (<c>CKPT_ENGINE_ALLOW_ENGINE_SOCKETS</c>, colon-separated).</summary>
    public IReadOnlyList<string> AllowEngineSockets { get; init; } = [];

    /// <summary>How this rank's P2P store reads and serves (<c>CKPT_ENGINE_P2P_TRANSPORT</c>: tcp, ucx or auto; default auto).</summary>
    public P2P.P2PTransport P2PTransport { get; init; }

    /// <summary>Which RDMA devices P2P reads may use, in NCCL_IB_HCA syntax, and the variable it came from (<c>PS_P2P_STORE_RDMA_DEVICES</c>, else <c>NCCL_IB_HCA</c>); null: all.</summary>
    public (string Spec, string Source)? RdmaDevices { get; init; }

    /// <summary>The environment chooses UCX's transports itself (<c>UCX_TLS</c>); otherwise the UCX store picks them.</summary>
    public bool UcxTlsSet { get; init; }

    /// <summary>The device id of this rank on the host backend: <see cref="DeviceId"/>, else the default for its local rank.</summary>
    public string HostDeviceId => DeviceId ?? DeviceIds.Host(LocalRank);

    public override string ToString() => $"rank {Rank}/{WorldSize} (local {LocalRank}/{LocalWorldSize}), store {MasterAddr}:{MasterPort}";
}
