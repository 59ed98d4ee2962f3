using System.Diagnostics;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Server;

/// <summary>Reference inference workers (<c>ckpt-engine worker</c>) for end-to-end tests: start one, read what its shards hold.</summary>
internal static class ReferenceWorkers
{
    /// <summary>A start description for one worker of <paramref name="deviceIds"/> (one shard each) listening on loopback.</summary>
    public static ProcessStartInfo Start(IEnumerable<string> deviceIds, params string[] extra) =>
        RankCluster.Start(["cli", "worker", "--listen", "127.0.0.1:0", "--tp", deviceIds.Count().ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--device-ids", string.Join(',', deviceIds), .. extra]);

    /// <summary>Starts <paramref name="psi"/> (into <paramref name="started"/>, for the caller to kill) and returns its URL once it listens.</summary>
    public static async Task<string> RunAsync(ProcessStartInfo psi, List<Process> started)
    {
        var p = Process.Start(psi)!;
        started.Add(p);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while (true)
        {
            var line = await p.StandardOutput.ReadLineAsync(cts.Token) ?? throw new InvalidOperationException("worker exited: " + await p.StandardError.ReadToEndAsync());
            if (line.StartsWith("listening on ", StringComparison.Ordinal))
            {
                return line["listening on ".Length..].Trim();
            }
        }
    }

    /// <summary>Every tensor's SHA-256 in the checkpoint at <paramref name="dir"/>.</summary>
    public static Dictionary<string, string> SourceDigests(string dir)
    {
        using var checkpoint = Checkpoint.Open(dir);
        return checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => Convert.ToHexStringLower(SHA256.HashData(e.File.View(e.Tensor).Span)));
    }

    /// <summary>
    /// Every tensor's SHA-256 as tensor-parallel shard <paramref name="rank"/> of <paramref name="size"/> of a <c>--shard-by-tp</c> worker holds
    /// it: its slice cut out of the source and packed (the whole tensor where it is not split).
    /// </summary>
    public static Dictionary<string, string> SliceDigests(string dir, int rank, int size)
    {
        using var checkpoint = Checkpoint.Open(dir);
        return checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e =>
        {
            var bytes = e.File.View(e.Tensor).Span;
            var slice = CheckpointEngine.ReferenceEngine.TensorParallelSlice.For(e.Tensor.Name, e.Tensor.DType, [.. e.Tensor.Shape], bytes.Length, rank, size, shardByTp: true);
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            for (long i = 0; i < slice.Chunks; i++)
            {
                sha.AppendData(bytes.Slice(checked((int)(slice.SourceOffset + i * slice.SourceStride)), checked((int)slice.ChunkBytes)));
            }
            return Convert.ToHexStringLower(sha.GetHashAndReset());
        });
    }

    /// <summary>Per shard (device id): every tensor's SHA-256 as the worker at <paramref name="url"/> holds it.</summary>
    public static async Task<Dictionary<string, Dictionary<string, string>>> DigestsAsync(string url, HttpClient? http = null)
    {
        using var own = http is null ? new HttpClient { Timeout = TimeSpan.FromSeconds(30) } : null;
        var doc = await (http ?? own!).GetFromJsonAsync<JsonElement>(url.TrimEnd('/') + "/v1/weights/digest");
        return doc.GetProperty("shards").EnumerateArray().ToDictionary(
            s => s.GetProperty("device_id").GetString()!,
            s => s.GetProperty("tensors").EnumerateObject().ToDictionary(t => t.Name, t => t.Value.GetString()!));
    }

    /// <summary>Asserts that every shard of these workers holds the checkpoint bit-exact, and that there are <paramref name="shards"/> of them.</summary>
    public static async Task AssertHoldAsync(string dir, IEnumerable<(string Url, HttpClient? Http)> workers, int shards)
    {
        var expected = SourceDigests(dir).OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var seen = 0;
        foreach (var (url, http) in workers)
        {
            foreach (var (_, tensors) in await DigestsAsync(url, http))
            {
                Assert.Equal(expected, tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal));
                seen++;
            }
        }
        Assert.Equal(shards, seen);
    }

    /// <summary>A checkpoint of tensor-parallel layers only (every tensor split between the shards, bar one norm), for relays between hosts.</summary>
    public static string WriteLayers(string root, int layers = 6)
    {
        var rng = new Random(7);
        TensorToWrite T(string name, DType dtype, params long[] shape)
        {
            var b = new byte[dtype.ByteLength(shape)];
            rng.NextBytes(b);
            return TensorToWrite.FromBytes(name, dtype, shape, b);
        }
        var dir = Path.Combine(root, "layers");
        Directory.CreateDirectory(dir);
        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), [T("model.norm.weight", DType.F32, 64),
            .. Enumerable.Range(0, layers).SelectMany(i => new[]
            {
                T($"layers.{i}.q_proj.weight", DType.BF16, 384, 256), T($"layers.{i}.o_proj.weight", DType.F16, 256, 384), T($"layers.{i}.up_proj.weight", DType.F8_E4M3, 512, 192),
            })]);
        return dir;
    }

    /// <summary>Every shard's slices put back together have the source tensor's checksum, and every tensor kept whole is bit-exact.</summary>
    public static async Task AssertSlicesAssembleAsync(string dir, IEnumerable<string> urls)
    {
        var expected = SourceDigests(dir);
        using var checkpoint = Checkpoint.Open(dir);
        var crcs = checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => System.IO.Hashing.Crc32.HashToUInt32(e.File.View(e.Tensor).Span).ToString("x8", System.Globalization.CultureInfo.InvariantCulture));
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        foreach (var url in urls)
        {
            var doc = await http.GetFromJsonAsync<JsonElement>(url + "/v1/weights/digest", TestContext.Current.CancellationToken);
            var assembled = doc.GetProperty("assembled_crc32").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
            Assert.NotEmpty(assembled);
            foreach (var (name, crc) in assembled)
            {
                Assert.Equal(crcs[name], crc);
            }
            foreach (var shard in doc.GetProperty("shards").EnumerateArray())
            {
                var sliced = shard.GetProperty("sliced").EnumerateArray().Select(e => e.GetString()!).ToHashSet();
                Assert.Equal(assembled.Keys.ToHashSet(), sliced);
                foreach (var t in shard.GetProperty("tensors").EnumerateObject().Where(t => !sliced.Contains(t.Name)))
                {
                    Assert.Equal(expected[t.Name], t.Value.GetString());
                }
            }
        }
    }
}
