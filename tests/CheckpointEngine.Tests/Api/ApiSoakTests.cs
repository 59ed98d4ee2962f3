using System.Net;
using System.Text.Json;
using CheckpointEngine.Planning;
using CheckpointEngine.ReferenceEngine;

namespace CheckpointEngine.Tests.Api;

/// <summary>
/// An RL loop through the API (register step k, gather its metas, update, unregister step k−1), as <c>ckpt-engine soak</c>
/// runs it: what a round leaves behind on the rank stays bounded however many names go by.
/// </summary>
public sealed class ApiSoakTests
{
    private const int Rounds = 30;

    [Fact]
    public async Task RlLoop_ManyStepNames_StoreKeysMetasAndMetricSeriesStayBounded()
    {
        await using var h = await ApiHarness.StartAsync();
        await using var worker = await ReferenceWorker.StartAsync(new ReferenceWorkerOptions { DeviceIds = [h.Device.Id], IdleTimeout = TimeSpan.FromSeconds(30) },
            cancellationToken: TestContext.Current.CancellationToken);
        var (files, _) = h.WriteModel();
        var update = JsonSerializer.Serialize(new { update_url = worker.Address.ToString(), timeout = 30 });
        var store = h.World.StoreServer!;
        int? series = null;
        for (var k = 1; k <= Rounds; k++)
        {
            Assert.Equal(HttpStatusCode.OK, (await h.PostAsync($"/v1/checkpoints/step{k}/files", RegisterBody.Files(files))).Status);
            Assert.Equal(HttpStatusCode.OK, (await h.PostAsync($"/v1/checkpoints/step{k}/gather-metas")).Status);
            var (status, body) = await h.PostAsync($"/v1/checkpoints/step{k}/update", update);
            Assert.True(status == HttpStatusCode.OK, body.ToString());
            if (k > 1)
            {
                Assert.Equal(HttpStatusCode.OK, (await h.SendAsync(HttpMethod.Delete, $"/v1/checkpoints/step{k - 1}")).Status);
                Assert.Null(h.ParameterServer.GetMetas($"step{k - 1}"));
            }
            // Only the registered step's metas are published; the world group keeps at most one key per member
            // (its last collective's), not one per broadcast.
            var keys = store.Keys;
            Assert.Equal([$"metas/step{k}"], keys.Where(key => key.StartsWith("metas/", StringComparison.Ordinal)));
            Assert.InRange(keys.Count(key => key.StartsWith("g/", StringComparison.Ordinal)), 0, h.World.Size);

            // Metric labels are the rank and the stage, never the checkpoint: the series do not grow with names.
            var metrics = await h.MetricsAsync();
            Assert.DoesNotContain($"step{k}", metrics, StringComparison.Ordinal);
            var count = metrics.Split('\n').Count(l => l.Length > 0 && !l.StartsWith('#'));
            Assert.Equal(series ??= count, count);
        }
        Assert.Equal(HttpStatusCode.OK, (await h.SendAsync(HttpMethod.Delete, $"/v1/checkpoints/step{Rounds}")).Status);
        Assert.DoesNotContain(store.Keys, key => key.StartsWith("metas/", StringComparison.Ordinal));
        Assert.Equal(Rounds, PrometheusText.Value(await h.MetricsAsync(), "ckpt_engine_updates_total", ("rank", "0")));
    }

    [Fact]
    public async Task RepeatedP2PUpdates_StoreKeepsOnlyTheLastSubGroupsKeys()
    {
        await using var h = await ApiHarness.StartAsync();
        await using var worker = await ReferenceWorker.StartAsync(new ReferenceWorkerOptions { DeviceIds = [h.Device.Id], IdleTimeout = TimeSpan.FromSeconds(30) },
            cancellationToken: TestContext.Current.CancellationToken);
        var (files, _) = h.WriteModel();
        Assert.Equal(HttpStatusCode.OK, (await h.PostAsync("/v1/checkpoints/step1/files", RegisterBody.Files(files))).Status);
        Assert.Equal(HttpStatusCode.OK, (await h.PostAsync("/v1/checkpoints/step1/gather-metas")).Status);
        var update = JsonSerializer.Serialize(new { ranks = new[] { 0 }, update_url = worker.Address.ToString(), timeout = 30 });
        for (var k = 1; k <= 10; k++)
        {
            var (status, body) = await h.PostAsync("/v1/checkpoints/step1/update", update);
            Assert.True(status == HttpStatusCode.OK, body.ToString());
            Assert.Equal("p2p", body.GetProperty("mode").GetString());
            // Each P2P update makes a sub-group; the store holds keys of the world group and of the last sub-group only.
            var groups = h.World.StoreServer!.Keys.Where(key => key.StartsWith("g/", StringComparison.Ordinal))
                .Select(key => key[..key.LastIndexOf('/', key.LastIndexOf('/') - 1)]).Distinct().Order(StringComparer.Ordinal);
            Assert.Equal([$"g/world/p2p[0].{k}", "g/world[0].1"], groups);
        }
    }

    [Fact]
    public async Task GatherMetas_OfNamesNoRankHolds_KeepsNothingHereOrInTheStore()
    {
        await using var h = await ApiHarness.StartAsync();
        for (var k = 0; k < 20; k++)
        {
            Assert.Equal(HttpStatusCode.NotFound, (await h.PostAsync($"/v1/checkpoints/typo{k}/gather-metas")).Status);
            Assert.Null(h.ParameterServer.GetMetas($"typo{k}"));
        }
        Assert.DoesNotContain(h.World.StoreServer!.Keys, key => key.StartsWith("metas/", StringComparison.Ordinal));
        Assert.Equal(HttpStatusCode.NotFound, (await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/typo0")).Status);
    }

    [Fact]
    public async Task Unregister_OnARankThatOnlyKnowsTheMetas_ForgetsThemHereAndInTheStore()
    {
        await using var h = await ApiHarness.StartAsync();
        var ct = TestContext.Current.CancellationToken;
        // Metas gathered elsewhere (a joining instance's, or this rank's when it held no share): nothing registered here.
        h.ParameterServer.SetMetas(new GlobalMetas("elsewhere", [new RankMetas(0, h.Device.Id, null, [])]));
        await h.World.Store.SetAsync("metas/elsewhere", [1, 2, 3], ct);

        var (status, body) = await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/elsewhere");
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.Null(h.ParameterServer.GetMetas("elsewhere"));
        Assert.Null(await h.World.Store.GetAsync("metas/elsewhere", ct));
        Assert.Equal(HttpStatusCode.NotFound, (await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/elsewhere")).Status);
    }
}
