using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using CheckpointEngine.ReferenceEngine;

namespace CheckpointEngine.Tests.Api;

/// <summary>Updates through the API: into a reference worker, bit for bit; and what the API does while one runs.</summary>
public sealed class ApiUpdateTests
{
    private static async Task<Dictionary<string, string>> WorkerDigestAsync(ReferenceWorker worker)
    {
        using var http = new HttpClient { BaseAddress = worker.Address, Timeout = TimeSpan.FromSeconds(30) };
        var doc = await http.GetFromJsonAsync<JsonElement>("/v1/weights/digest", TestContext.Current.CancellationToken);
        var shard = Assert.Single(doc.GetProperty("shards").EnumerateArray());
        return shard.GetProperty("tensors").EnumerateObject().ToDictionary(t => t.Name, t => t.Value.GetString()!);
    }

    private static Task<ReferenceWorker> StartWorkerAsync(ApiHarness h) => ReferenceWorker.StartAsync(new ReferenceWorkerOptions
    {
        DeviceIds = [h.Device.Id],
        IdleTimeout = TimeSpan.FromSeconds(30),
    }, cancellationToken: TestContext.Current.CancellationToken);

    /// <summary>Registers the harness's model as "step-1" and gathers its metas; returns its tensors.</summary>
    private static async Task<TestTensor[]> RegisterAndGatherAsync(ApiHarness h)
    {
        var (files, tensors) = h.WriteModel();
        Assert.Equal(HttpStatusCode.OK, (await h.PostAsync("/v1/checkpoints/step-1/files", RegisterBody.Files(files))).Status);
        Assert.Equal(HttpStatusCode.OK, (await h.PostAsync("/v1/checkpoints/step-1/gather-metas")).Status);
        return tensors;
    }

    [Fact]
    public async Task Update_IntoReferenceWorker_HoldsEveryTensorBitForBit_AndMetricsShowIt()
    {
        await using var h = await ApiHarness.StartAsync();
        await using var worker = await StartWorkerAsync(h);
        var tensors = await RegisterAndGatherAsync(h);
        var bytes = tensors.Sum(t => t.Bytes.LongLength);

        var (status, report) = await h.PostAsync("/v1/checkpoints/step-1/update", JsonSerializer.Serialize(new
        {
            ranks = Array.Empty<int>(),
            update_url = worker.Address.ToString(),
            inference_group_ranks = Array.Empty<int>(),
            timeout = 30,
            uds = (string?)null,
        }));
        Assert.True(status == HttpStatusCode.OK, report.ToString());
        Assert.Equal(("step-1", 0, "broadcast", bytes), (report.GetProperty("checkpoint").GetString(), report.GetProperty("rank").GetInt32(),
            report.GetProperty("mode").GetString(), report.GetProperty("bytes").GetInt64()));
        // Every bucket carries at least one tensor and at most bucket_size bytes.
        var buckets = report.GetProperty("buckets").GetInt32();
        var bucketSize = report.GetProperty("bucket_size").GetInt64();
        Assert.Equal(1, report.GetProperty("buckets_in_flight").GetInt32()); // One host: nothing relayed, one at a time.
        Assert.InRange((long)buckets, Math.Max(1, (bytes + bucketSize - 1) / bucketSize), (long)tensors.Length);
        // Each stage runs one bucket at a time, so its sum lies within the update. The worker's reloads take real time; on one
        // host the worker reads the registered memory in place (nothing staged) and a one-rank broadcast sends nothing.
        var seconds = report.GetProperty("seconds").GetDouble();
        Assert.True(seconds > 0, report.ToString());
        var stages = report.GetProperty("stages");
        Assert.InRange(stages.GetProperty("reload_seconds").GetDouble(), 1e-6, seconds);
        Assert.All(new[] { "h2d_seconds", "broadcast_seconds" }, s => Assert.InRange(stages.GetProperty(s).GetDouble(), 0, seconds));

        Assert.Equal(tensors.ToDictionary(t => t.Name, t => t.Sha256).OrderBy(kv => kv.Key, StringComparer.Ordinal),
            (await WorkerDigestAsync(worker)).OrderBy(kv => kv.Key, StringComparer.Ordinal));

        var metrics = await h.MetricsAsync();
        var rank = ("rank", "0");
        Assert.Equal(1, PrometheusText.Value(metrics, "ckpt_engine_updates_total", rank, ("method", "broadcast")));
        Assert.DoesNotContain("ckpt_engine_update_failures_total", metrics, StringComparison.Ordinal);
        Assert.Equal(bytes, PrometheusText.Value(metrics, "ckpt_engine_update_bytes_total", rank));
        Assert.Equal(buckets, PrometheusText.Value(metrics, "ckpt_engine_update_buckets_total", rank));
        Assert.Equal(1, PrometheusText.Value(metrics, "ckpt_engine_update_duration_seconds_count", rank));
        Assert.Equal(1, PrometheusText.Value(metrics, "ckpt_engine_update_duration_seconds_bucket", rank, ("le", "+Inf")));
        Assert.Equal(seconds, PrometheusText.Value(metrics, "ckpt_engine_update_last_duration_seconds", rank), 1e-3);
        Assert.Equal(bytes, PrometheusText.Value(metrics, "ckpt_engine_registered_bytes", rank));
        // A bucket stage histogram per stage, one sample per bucket this rank had a part in. One host: the worker loads in
        // place from the registered memory, so nothing is staged (no h2d samples).
        Assert.DoesNotContain("stage=\"h2d\"", metrics, StringComparison.Ordinal);
        Assert.Equal(buckets, PrometheusText.Value(metrics, "ckpt_engine_bucket_stage_duration_seconds_count", rank, ("stage", "reload")));
        Assert.True(PrometheusText.Value(metrics, "ckpt_engine_agreement_wait_seconds_count", rank) >= buckets + 2); // The attach, each reload, and the end (release and the post-load hook).
        Assert.Contains("# TYPE ckpt_engine_update_duration_seconds histogram\n", metrics, StringComparison.Ordinal);

        // A new step: unregister, register other weights under the same name, update again.
        Assert.Equal(HttpStatusCode.OK, (await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/step-1")).Status);
        var (files2, tensors2) = h.WriteModel(seed: 2);
        Assert.Equal(HttpStatusCode.OK, (await h.PostAsync("/v1/checkpoints/step-1/files", RegisterBody.Files(files2))).Status);
        (status, report) = await h.PostAsync("/v1/checkpoints/step-1/update", $"{{\"update_url\": \"{worker.Address}\", \"timeout\": 30}}");
        Assert.True(status == HttpStatusCode.OK, report.ToString());
        Assert.Equal(tensors2.ToDictionary(t => t.Name, t => t.Sha256).OrderBy(kv => kv.Key, StringComparer.Ordinal),
            (await WorkerDigestAsync(worker)).OrderBy(kv => kv.Key, StringComparer.Ordinal));
        Assert.Equal(2, PrometheusText.Value(await h.MetricsAsync(), "ckpt_engine_updates_total", ("rank", "0")));
    }

    [Fact]
    public async Task Prepare_MovesNothingAndCountsNoUpdate_ThenTheUpdateIsBitExact()
    {
        await using var h = await ApiHarness.StartAsync();
        await using var worker = await StartWorkerAsync(h);
        var tensors = await RegisterAndGatherAsync(h);
        var before = await WorkerDigestAsync(worker);

        var body = $"{{\"update_url\": \"{worker.Address}\", \"timeout\": 30}}";
        var (status, report) = await h.PostAsync("/v1/checkpoints/step-1/prepare", body);

        Assert.True(status == HttpStatusCode.OK, report.ToString());
        Assert.Equal((0L, 0, true), (report.GetProperty("bytes").GetInt64(), report.GetProperty("buckets").GetInt32(), report.GetProperty("took_part").GetBoolean()));
        Assert.Equal(before, await WorkerDigestAsync(worker)); // The engine's weights are untouched.
        Assert.DoesNotContain("ckpt_engine_updates_total", await h.MetricsAsync(), StringComparison.Ordinal);
        (status, report) = await h.PostAsync("/v1/checkpoints/step-1/update", body);
        Assert.True(status == HttpStatusCode.OK, report.ToString());
        Assert.Equal(tensors.ToDictionary(t => t.Name, t => t.Sha256).OrderBy(kv => kv.Key, StringComparer.Ordinal),
            (await WorkerDigestAsync(worker)).OrderBy(kv => kv.Key, StringComparer.Ordinal));
    }

    [Fact]
    public async Task WhileUpdateRuns_OtherCollectivesAndDeleteGet409_ThenEngineFailureIs500WithItsMessage()
    {
        await using var h = await ApiHarness.StartAsync();
        using var engine = new BlockingEngine("engine says no");
        var (files, _) = h.WriteModel();
        Assert.Equal(HttpStatusCode.OK, (await h.PostAsync("/v1/checkpoints/step-1/files", RegisterBody.Files(files))).Status);

        var running = h.PostAsync("/v1/checkpoints/step-1/update", $"{{\"update_url\": \"{engine.Url}\", \"timeout\": 30}}");
        await engine.Requested.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken); // The update is inside its trigger now.

        foreach (var (method, path, body) in new[]
        {
            (HttpMethod.Post, "/v1/checkpoints/step-1/update", "{}"),
            (HttpMethod.Post, "/v1/checkpoints/step-1/gather-metas", null),
            (HttpMethod.Delete, "/v1/checkpoints/step-1", null),
        })
        {
            var (status, json) = await h.SendAsync(method, path, body);
            Assert.True(status == HttpStatusCode.Conflict, $"{method} {path}: {(int)status} {json}");
            Assert.Contains("rank 0 is busy with an update of 'step-1'", json.GetProperty("error").GetString(), StringComparison.Ordinal);
        }
        var (_, state) = await h.GetAsync("/v1/status");
        Assert.Equal("an update of 'step-1'", state.GetProperty("busy").GetString());
        var (code, shown, _) = await Task.Run(() => InProcessCli.Run("status", "--url", h.Http.BaseAddress!.ToString()), TestContext.Current.CancellationToken);
        Assert.Equal(0, code);
        Assert.Contains("busy: an update of 'step-1'", shown, StringComparison.Ordinal); // Its buckets are not known before the worker attaches.
        Assert.Contains("no update finished yet", shown, StringComparison.Ordinal);
        Assert.Equal(1, PrometheusText.Value(await h.MetricsAsync(), "ckpt_engine_update_in_progress", ("rank", "0")));
        Assert.Equal(HttpStatusCode.OK, (await h.GetAsync("/v1/healthz")).Status);

        engine.Release();
        var (failed, error) = await running.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.InternalServerError, failed);
        Assert.Contains("engine says no", error.GetProperty("error").GetString(), StringComparison.Ordinal);
        var metrics = await h.MetricsAsync();
        Assert.Equal(1, PrometheusText.Value(metrics, "ckpt_engine_update_failures_total", ("rank", "0"), ("cause", "engine")));
        Assert.Equal(0, PrometheusText.Value(metrics, "ckpt_engine_update_in_progress", ("rank", "0")));

        // The rank is free again.
        Assert.Equal(JsonValueKind.Null, (await h.GetAsync("/v1/status")).Body.GetProperty("busy").ValueKind);
        Assert.Equal(HttpStatusCode.OK, (await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/step-1")).Status);
    }

    [Theory]
    [InlineData(null, "/collective_rpc", "{\"method\":\"update_weights_from_ipc\",\"args\":[{")]
    [InlineData("\"vllm\"", "/collective_rpc", "{\"method\":\"update_weights_from_ipc\",\"args\":[{")]
    [InlineData("\"sglang\"", "/update_weights_from_ipc", "{\"zmq_handles\":{")]
    public async Task Update_EngineField_PostsThatEnginesRouteAndBody(string? engineJson, string path, string bodyStart)
    {
        await using var h = await ApiHarness.StartAsync();
        using var engine = new BlockingEngine("not this time");
        var (files, _) = h.WriteModel();
        Assert.Equal(HttpStatusCode.OK, (await h.PostAsync("/v1/checkpoints/step-7/files", RegisterBody.Files(files))).Status);

        var engineField = engineJson is null ? "" : $", \"engine\": {engineJson}";
        var running = h.PostAsync("/v1/checkpoints/step-7/update", $"{{\"update_url\": \"{engine.Url}\", \"timeout\": 30{engineField}}}");
        await engine.Requested.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        engine.Release();
        var (status, error) = await running.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        Assert.StartsWith($"POST {path} HTTP/1.1\r\n", engine.Request, StringComparison.Ordinal);
        var body = engine.Request[(engine.Request.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..];
        Assert.StartsWith(bodyStart, body, StringComparison.Ordinal);
        Assert.Contains($"\"{h.Device.Id}\":\"", body, StringComparison.Ordinal); // this rank's device and its ticket
        if (path == "/update_weights_from_ipc")
        {
            Assert.EndsWith("},\"flush_cache\":true,\"weight_version\":\"step-7\"}", body, StringComparison.Ordinal);
        }
        Assert.Equal(HttpStatusCode.InternalServerError, status);
        Assert.Contains($"{path} answered 500: not this time", error.GetProperty("error").GetString(), StringComparison.Ordinal);
    }
}
