using System.Text.Json.Serialization;

namespace CheckpointEngine.Worker;

/// <summary>
/// A message from the parameter server to an inference worker, one per frame (see
/// <see cref="WorkerFraming"/>). Language-neutral JSON with a "type" field first, so any worker (the
/// .NET library, the Python vLLM extension) can speak it with a standard library. Every message gets
/// one <see cref="WorkerReply"/>.
/// </summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "type")]
[JsonDerivedType(typeof(AttachMessage), "attach")]
[JsonDerivedType(typeof(LoadMessage), "load")]
[JsonDerivedType(typeof(ReleaseMessage), "release")]
[JsonDerivedType(typeof(FinishMessage), "finish")]
[JsonDerivedType(typeof(AbortMessage), "abort")]
public abstract record WorkerMessage;

/// <summary>
/// Map the device buffer the weights arrive in. <see cref="Kind"/> "shm": <see cref="Handle"/> is a
/// segment name under /dev/shm; "cuda-ipc": a base64 CUDA IPC memory handle. <see cref="Segments"/> (only to a
/// worker whose hello said it maps them, host backend): further shared-memory segments, the owners' registered
/// memory on this host, that loads read tensors out of in place (a tensor's <see cref="WireTensor.Segment"/> i ≥ 1 is Segments[i − 1]).
/// <see cref="Prepare"/> (only to a worker whose hello said <see cref="WorkerHello.Prepares"/>): this session moves nothing; the worker maps
/// what the attach names and keeps it mapped for the next update, with <see cref="Prefault"/> also faulting in the pages of the further
/// segments that hold data (the owners' memory, which loads will read whole), then the session ends at "release": no loads, no "finish",
/// no post-load hook. The first real update then finds everything mapped.
/// </summary>
public sealed record AttachMessage(
    [property: JsonPropertyName("kind")] string Kind,
    [property: JsonPropertyName("handle")] string Handle,
    [property: JsonPropertyName("size")] long Size,
    [property: JsonPropertyName("device_id")] string DeviceId,
    [property: JsonPropertyName("segments")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    IReadOnlyList<SegmentRef>? Segments = null,
    [property: JsonPropertyName("prepare")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    bool Prepare = false,
    [property: JsonPropertyName("prefault")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    bool Prefault = false) : WorkerMessage;

/// <summary>A shared-memory segment under /dev/shm by name, and the bytes of it a worker maps.</summary>
public sealed record SegmentRef(
    [property: JsonPropertyName("handle")] string Handle,
    [property: JsonPropertyName("size")] long Size);

/// <summary>Bucket <see cref="Bucket"/> is in the buffer: read these tensors (offsets from the buffer's start) and load what you need.</summary>
public sealed record LoadMessage(
    [property: JsonPropertyName("bucket")] int Bucket,
    [property: JsonPropertyName("tensors")] IReadOnlyList<WireTensor> Tensors) : WorkerMessage;

/// <summary>No more buckets: unmap the buffer.</summary>
public sealed record ReleaseMessage : WorkerMessage;

/// <summary>Every tensor is loaded: run the post-load hook (re-quantize, fuse), then the update is over.</summary>
public sealed record FinishMessage : WorkerMessage;

/// <summary>The update failed elsewhere: drop what you were doing and unmap.</summary>
public sealed record AbortMessage([property: JsonPropertyName("reason")] string Reason) : WorkerMessage;

/// <summary>
/// One tensor in the buffer. <see cref="Crc32"/> (8 hex digits, see <see cref="TensorChecksum"/>) is sent when the update
/// verifies; <see cref="Sha256"/> (64 hex digits) is the older optional checksum, still honoured. A worker verifies whichever
/// it is given; one that ignores unknown fields (older workers) just loads. <see cref="Part"/>: only the slices the worker
/// declared it keeps (see <see cref="WorkerWants"/>), packed; <see cref="Shape"/> is then the part's shape. <see cref="Segment"/>:
/// which attached segment <see cref="Offset"/> is in (null or 0: the attach's buffer; i ≥ 1: <see cref="AttachMessage.Segments"/>[i − 1]).
/// <see cref="Pitch"/> (only to a worker whose hello said <see cref="WorkerHello.Strided"/>, and only with a <see cref="Part"/> of one
/// slice): the part is not packed but lies in place inside its whole tensor, in rows (one per index of the dimensions before
/// <see cref="TensorPart.Dim"/>, each <see cref="NBytes"/> / rows bytes), the first at <see cref="Offset"/> and each <see cref="Pitch"/> bytes after
/// the one before (the whole tensor's row stride at that dimension).
/// </summary>
public sealed record WireTensor(
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("dtype")] string DType,
    [property: JsonPropertyName("shape")] long[] Shape,
    [property: JsonPropertyName("offset")] long Offset,
    [property: JsonPropertyName("nbytes")] long NBytes,
    [property: JsonPropertyName("sha256")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    string? Sha256 = null,
    [property: JsonPropertyName("crc32")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    string? Crc32 = null,
    [property: JsonPropertyName("part")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    TensorPart? Part = null,
    [property: JsonPropertyName("segment")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    int? Segment = null,
    [property: JsonPropertyName("pitch")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    long? Pitch = null);

/// <summary>
/// Which part of a tensor of <see cref="FullShape"/> a load carries: the indices <see cref="Slices"/> (each
/// [start, length]) along <see cref="Dim"/>, concatenated in order along that dimension.
/// </summary>
public sealed record TensorPart(
    [property: JsonPropertyName("dim")] int Dim,
    [property: JsonPropertyName("slices")] long[][] Slices,
    [property: JsonPropertyName("full_shape")] long[] FullShape)
{
    /// <summary>The shape of the packed part: <see cref="FullShape"/> with the sliced dimension's length replaced by the slices' total.</summary>
    public long[] PartShape()
    {
        var shape = FullShape.ToArray();
        shape[Dim] = Slices.Sum(s => s[1]);
        return shape;
    }
}

/// <summary>The worker's answer: ok, or the error text the parameter server raises on every rank.</summary>
public sealed record WorkerReply(
    [property: JsonPropertyName("ok")] bool Ok,
    [property: JsonPropertyName("error")]
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    string? Error = null)
{
    public static readonly WorkerReply Success = new(true);
}
