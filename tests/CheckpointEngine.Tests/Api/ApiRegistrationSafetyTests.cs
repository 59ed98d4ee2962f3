using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Tests.Worker;

namespace CheckpointEngine.Tests.Api;

/// <summary>
/// A client names files for the server to read: each attack that once worked (hanging on a FIFO, reading
/// a file's first bytes back from the error, escaping the allowed directories, exhausting host memory)
/// now fails fast with a 4xx that says no more than it should, and leaves nothing registered.
/// </summary>
public sealed class ApiRegistrationSafetyTests
{
    private static readonly TimeSpan Fast = TimeSpan.FromSeconds(10);

    private static async Task MakeFifoAsync(string path)
    {
        var (code, output) = await TestProcess.RunAsync("mkfifo", [path], TimeSpan.FromSeconds(30));
        Assert.True(code == 0, output);
    }

    private static string Error(System.Text.Json.JsonElement body) => body.GetProperty("error").GetString()!;

    [Fact]
    public async Task Register_Fifo_FailsFastNamingIt_AndTheNameRegistersAfterwards()
    {
        await using var h = await ApiHarness.StartAsync();
        var fifo = h.Temp.File("pipe.safetensors");
        await MakeFifoAsync(fifo);
        var clock = Stopwatch.StartNew();
        var (status, body) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files(fifo));
        Assert.True(clock.Elapsed < Fast, $"took {clock.Elapsed}");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal($"files[0]: '{fifo}' is not a regular file (a FIFO)", Error(body));

        // Not left "being registered": the same name registers, and unregisters.
        var good = h.WriteFile("good.safetensors", TestTensor.Random("w", DType.F32, [4]));
        (status, body) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files(good));
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        (status, _) = await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/m");
        Assert.Equal(HttpStatusCode.OK, status);
    }

    [Fact]
    public async Task Register_FifoAsConfigJson_WithQuantize_FailsFast()
    {
        await using var h = await ApiHarness.StartAsync();
        var good = h.WriteFile("model.safetensors", TestTensor.Random("w", DType.BF16, [4, 4]));
        await MakeFifoAsync(h.Temp.File("config.json"));
        var clock = Stopwatch.StartNew();
        var (status, body) = await h.PostAsync("/v1/checkpoints/m/files", "{\"files\": [\"" + good + "\"], \"quantize\": \"fp8\"}");
        Assert.True(clock.Elapsed < Fast, $"took {clock.Elapsed}");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("is not a regular file (a FIFO)", Error(body), StringComparison.Ordinal);
        Assert.Empty(h.ParameterServer.Registry.Checkpoints);
    }

    [Fact]
    public async Task Register_CharacterDevice_IsRefusedWithoutOpeningIt()
    {
        await using var h = await ApiHarness.StartAsync();
        var (status, body) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files("/dev/zero"));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("files[0]: '/dev/zero' is not a regular file (a character device)", Error(body));
    }

    [Fact]
    public async Task Register_FileWithSecretFirstBytes_ErrorShowsNeitherTheBytesNorTheSize()
    {
        await using var h = await ApiHarness.StartAsync();
        var secret = Encoding.ASCII.GetBytes("root:$6$rounds=5000$saltsalt$c2VjcmV0IGhhc2g:19000:0:99999:7:::\n");
        var path = h.Temp.Write("shadow", secret);
        var (status, body) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files(path));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        var error = Error(body);
        Assert.StartsWith(path + ": ", error, StringComparison.Ordinal);
        error = error[(path.Length + 2)..]; // The temp directory's random name could hold any digits.
        Assert.Contains("not a safetensors file (header length out of range)", error, StringComparison.Ordinal);
        var asLength = BinaryPrimitives.ReadUInt64LittleEndian(secret);
        Assert.DoesNotContain(asLength.ToString(CultureInfo.InvariantCulture), error, StringComparison.Ordinal);
        Assert.DoesNotContain("root:", error, StringComparison.Ordinal);
        Assert.DoesNotContain("$6$", error, StringComparison.Ordinal);
        Assert.DoesNotContain(secret.Length.ToString(CultureInfo.InvariantCulture), error, StringComparison.Ordinal);
        Assert.Empty(h.ParameterServer.Registry.Checkpoints);
    }

    [Fact]
    public async Task Register_ShortFile_DoesNotTellItsSize()
    {
        await using var h = await ApiHarness.StartAsync();
        var path = h.Temp.Write("short", Encoding.ASCII.GetBytes("pin=7"));
        var (status, body) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files(path));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal($"{path}: not a safetensors file: shorter than the 8-byte header length", Error(body));
    }

    /// <summary>A server allowed to read <c>allowed/</c> only, with a model inside and a secret file beside it.</summary>
    private static async Task<(ApiHarness H, string Allowed, string Outside)> AllowListedAsync()
    {
        var h = await ApiHarness.StartAsync(configure: (o, temp) => o with { AllowedDirectories = [temp.SubDirectory("allowed")] });
        var allowed = h.Temp.File("allowed");
        var outside = h.Temp.SubDirectory("outside");
        h.WriteFile("outside/model.safetensors", TestTensor.Random("w", DType.F32, [4]));
        return (h, allowed, outside);
    }

    [Fact]
    public async Task AllowDir_PathsOutside_AreRefusedAlike_WhetherOrNotTheyExist()
    {
        var (h, allowed, outside) = await AllowListedAsync();
        await using var _ = h;
        string[] outsidePaths =
        [
            $"{outside}/model.safetensors",
            $"{outside}/missing.safetensors",
            "/etc/shadow",
            $"{allowed}/../outside/model.safetensors",
            $"{allowed}/../outside/missing.safetensors",
        ];
        foreach (var path in outsidePaths)
        {
            var (status, body) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files(path));
            Assert.Equal(HttpStatusCode.Forbidden, status);
            Assert.Equal($"files[0]: '{Path.GetFullPath(path)}' is outside the allowed directories ({allowed})", Error(body));
        }
        Assert.Empty(h.ParameterServer.Registry.Checkpoints);
    }

    [Fact]
    public async Task AllowDir_SymbolicLinksOut_AreRefused_AndFilesInsideRegister()
    {
        var (h, allowed, outside) = await AllowListedAsync();
        await using var _ = h;
        File.CreateSymbolicLink($"{allowed}/link.safetensors", $"{outside}/model.safetensors");
        Directory.CreateSymbolicLink($"{allowed}/sub", outside);
        File.CreateSymbolicLink($"{allowed}/dangling.safetensors", $"{outside}/missing.safetensors");
        foreach (var path in new[] { $"{allowed}/link.safetensors", $"{allowed}/sub/model.safetensors" })
        {
            var (status, body) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files(path));
            Assert.Equal(HttpStatusCode.Forbidden, status);
            Assert.Equal($"files[0]: '{path}' is outside the allowed directories ({allowed})", Error(body));
        }
        // A link to a missing file outside reads like any unreadable file inside: no probing through links.
        var (s, b) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files($"{allowed}/dangling.safetensors", $"{allowed}/missing.safetensors"));
        Assert.Equal(HttpStatusCode.BadRequest, s);
        Assert.Equal($"files[0]: '{allowed}/dangling.safetensors' does not exist or cannot be read", Error(b));
        Assert.Empty(h.ParameterServer.Registry.Checkpoints);

        var inside = h.WriteFile("allowed/model.safetensors", TestTensor.Random("w", DType.F32, [4]));
        (s, b) = await h.PostAsync("/v1/checkpoints/m/files", RegisterBody.Files(inside));
        Assert.True(s == HttpStatusCode.OK, b.ToString());
    }

    [Fact]
    public async Task AllowDir_ConfigJsonLinkedOut_IsRefusedWithQuantize()
    {
        var (h, allowed, outside) = await AllowListedAsync();
        await using var _ = h;
        var inside = h.WriteFile("allowed/model.safetensors", TestTensor.Random("w", DType.BF16, [4, 4]));
        var secret = h.Temp.WriteText("outside/config.json", "{\"quantization_config\": {\"weight_block_size\": \"s3cr3t\"}}");
        File.CreateSymbolicLink($"{allowed}/config.json", secret);
        var (status, body) = await h.PostAsync("/v1/checkpoints/m/files", "{\"files\": [\"" + inside + "\"], \"quantize\": \"fp8\"}");
        Assert.Equal(HttpStatusCode.Forbidden, status);
        Assert.DoesNotContain("s3cr3t", Error(body), StringComparison.Ordinal);
        Assert.Contains("is outside the allowed directories", Error(body), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Budget_Exceeded_Is413NamingUsedRequestedAndBudget_AndNothingIsRegistered()
    {
        await using var h = await ApiHarness.StartAsync();
        var registry = h.ParameterServer.Registry;
        var small = h.WriteFile("small.safetensors", TestTensor.Random("w", DType.F32, [64])); // 256 bytes: one 256-byte buffer.
        var big = h.WriteFile("big.safetensors", TestTensor.Random("w", DType.F32, [1024])); // 4096 bytes.
        registry.Budget = 4096;

        var (status, body) = await h.PostAsync("/v1/checkpoints/small/files", RegisterBody.Files(small));
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        var used = registry.BytesInUse;
        Assert.Equal(256, used);

        (status, body) = await h.PostAsync("/v1/checkpoints/big/files", RegisterBody.Files(big));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, status);
        Assert.Equal(
            "checkpoint 'big' needs 4096 bytes of host memory, but 256 bytes of the 4096 bytes registration budget are in use (3840 bytes left): " +
            "unregister a checkpoint or raise the budget (serve --registration-budget or CKPT_ENGINE_REGISTRATION_BUDGET_GB)",
            Error(body));
        Assert.False(registry.TryGet("big", out _));
        Assert.Equal(used, registry.BytesInUse); // Nothing promised to it either (RegistrationBudgetTests: nothing allocated).

        // Freeing the first makes room; the refused name was left free.
        (status, _) = await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/small");
        Assert.Equal(HttpStatusCode.OK, status);
        (status, body) = await h.PostAsync("/v1/checkpoints/big/files", RegisterBody.Files(big));
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.Equal(4096, registry.BytesInUse);
    }
}
