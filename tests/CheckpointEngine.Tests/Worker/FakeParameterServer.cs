using System.Net.Sockets;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Tests.Support;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Worker;

/// <summary>
/// The parameter-server end of the worker protocol, in-process: a unique abstract socket to listen
/// on and a shared-memory segment to put tensors in. Every step has a deadline; disposal closes the
/// socket and unlinks the segment.
/// </summary>
internal sealed class FakeParameterServer : IDisposable
{
    /// <summary>The most any single step of a test may take before it counts as hung.</summary>
    public static readonly TimeSpan StepDeadline = TimeSpan.FromSeconds(5);

    private readonly Socket _listener;
    private Socket? _connection;
    private NetworkStream? _stream;
    private long _next;

    private FakeParameterServer(string name, long size, string deviceId, bool listen)
    {
        Address = "@" + name;
        DeviceId = deviceId;
        Segment = SharedMemorySegment.Create(name, size);
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        if (listen)
        {
            Listen();
        }
    }

    public string Address { get; }

    /// <summary>What the worker is handed: the address and this server's session key.</summary>
    public WorkerTicket Ticket => field ??= WorkerTicket.New(Address);

    public string DeviceId { get; }

    public SharedMemorySegment Segment { get; }

    public AttachMessage Attach => new("shm", Segment.Name, Segment.Size, DeviceId);

    public static FakeParameterServer Start(long size = 1 << 16, string? deviceId = null, bool listen = true)
    {
        var name = "ckpt-test-" + Guid.NewGuid().ToString("N")[..16];
        return new FakeParameterServer(name, size, deviceId ?? "test-" + name, listen);
    }

    public void Listen()
    {
        _listener.Bind(WorkerSockets.EndPoint(Address));
        _listener.Listen(4);
    }

    /// <summary>Writes tensors into the segment at 256-byte aligned offsets after the previous ones.</summary>
    public List<WireTensor> Place(IEnumerable<TestTensor> tensors, bool withSha256 = false, bool withCrc32 = false)
    {
        var wire = new List<WireTensor>();
        foreach (var t in tensors)
        {
            var offset = (_next + 255) / 256 * 256;
            wire.Add(PlaceAt(t, offset, withSha256, withCrc32));
            _next = offset + t.Bytes.Length;
        }
        return wire;
    }

    /// <summary>Writes one tensor at exactly <paramref name="offset"/> in the segment (for the edges of the segment).</summary>
    public unsafe WireTensor PlaceAt(TestTensor t, long offset, bool withSha256 = false, bool withCrc32 = false)
    {
        t.Bytes.CopyTo(new Span<byte>(Segment.Pointer + offset, t.Bytes.Length));
        return new WireTensor(t.Name, t.DType.Name(), t.Shape, offset, t.Bytes.Length, withSha256 ? t.Sha256 : null,
            withCrc32 ? TensorChecksum.Hex(ReferenceCrc32.Of(t.Bytes)) : null);
    }

    /// <summary>Flips the bits of <paramref name="mask"/> in the segment's byte at <paramref name="offset"/> (a corruption on the way).</summary>
    public unsafe void Corrupt(long offset, byte mask) => Segment.Pointer[offset] ^= mask;

    /// <summary>A copy of the segment's bytes [offset, offset + length).</summary>
    public unsafe byte[] Read(long offset, long length) => new ReadOnlySpan<byte>(Segment.Pointer + offset, (int)length).ToArray();

    /// <summary>Accepts the worker and checks that its first frame is this server's session key.</summary>
    public async Task AcceptAsync()
    {
        _connection = await _listener.AcceptAsync(TestContext.Current.CancellationToken).AsTask()
            .WaitAsync(StepDeadline, TestContext.Current.CancellationToken);
        _stream = new NetworkStream(_connection, ownsSocket: true);
        var hello = await WorkerFraming.ReadAsync<WorkerHello>(_stream, TestContext.Current.CancellationToken).WaitAsync(StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal(Ticket.Session, hello?.Session);
        Hello = hello;
        if (hello!.Wants)
        {
            var frame = await WorkerFraming.ReadFrameAsync(_stream, TestContext.Current.CancellationToken).WaitAsync(StepDeadline, TestContext.Current.CancellationToken);
            DeclaredWants = WorkerWants.Parse(frame);
        }
    }

    /// <summary>The worker's hello.</summary>
    public WorkerHello? Hello { get; private set; }

    /// <summary>What the worker declared it keeps, if it did.</summary>
    public WorkerWants? DeclaredWants { get; private set; }

    /// <summary>Sends a message and returns the worker's reply.</summary>
    public async Task<WorkerReply> SendAsync(WorkerMessage message)
    {
        await SendRawAsync(WorkerFraming.Encode(message));
        return await ReplyAsync() ?? throw new IOException($"the worker closed the connection instead of answering {message.GetType().Name}");
    }

    public async Task SendRawAsync(byte[] bytes) =>
        await Stream.WriteAsync(bytes, TestContext.Current.CancellationToken).AsTask().WaitAsync(StepDeadline, TestContext.Current.CancellationToken);

    public Task<WorkerReply?> ReplyAsync() =>
        WorkerFraming.ReadAsync<WorkerReply>(Stream, TestContext.Current.CancellationToken).WaitAsync(StepDeadline, TestContext.Current.CancellationToken);

    /// <summary>A whole update: accept, attach, one load per bucket, release, finish; every reply must be ok.</summary>
    public async Task UpdateAsync(params IReadOnlyList<WireTensor>[] buckets)
    {
        await AcceptAsync();
        AssertOk(await SendAsync(Attach));
        for (var b = 0; b < buckets.Length; b++)
        {
            AssertOk(await SendAsync(new LoadMessage(b, buckets[b])));
        }
        AssertOk(await SendAsync(new ReleaseMessage()));
        AssertOk(await SendAsync(new FinishMessage()));
    }

    public static void AssertOk(WorkerReply reply) => Assert.True(reply.Ok, reply.Error);

    /// <summary>Drops the connection, as a parameter server that dies does.</summary>
    public void CloseConnection()
    {
        _stream?.Dispose();
        _stream = null;
    }

    /// <summary>How many mappings of the segment this process has (the server's own is one).</summary>
    public int Mappings() => File.ReadLines("/proc/self/maps").Count(l => l.Contains(Segment.Path, StringComparison.Ordinal));

    private NetworkStream Stream => _stream ?? throw new InvalidOperationException("no worker connected");

    public void Dispose()
    {
        _stream?.Dispose();
        _listener.Dispose();
        Segment.Dispose();
    }
}
