using CheckpointEngine.Planning;
using CheckpointEngine.Server;

namespace CheckpointEngine.Tests.Server;

/// <summary>With several buckets in flight, consecutive buckets come from stagers on different hosts where they can.</summary>
public sealed class BucketOrderTests
{
    private static BucketStep Step(int stager, int index) => new(new H2DBucket(stager, index, 1, [], []), stager, (_, _) => Task.CompletedTask);

    [Fact]
    public void ByHostInTurn_TakesHostsInTurn_KeepingEachHostsOrder()
    {
        // Ranks 0, 1 on host a, ranks 2, 3 on host b; the planner's order takes owners in rank order.
        string[] hostOf = ["a", "a", "b", "b"];
        List<BucketStep> steps = [Step(0, 0), Step(1, 0), Step(2, 0), Step(3, 0), Step(0, 1), Step(1, 1), Step(2, 1)];

        var ordered = ParameterServer.ByHostInTurn(steps, hostOf);

        Assert.Equal([(0, 0), (2, 0), (1, 0), (3, 0), (0, 1), (2, 1), (1, 1)], ordered.Select(s => (s.Stager, s.Bucket.Index)));
    }

    [Fact]
    public void ByHostInTurn_OneHost_KeepsTheOrder()
    {
        List<BucketStep> steps = [Step(1, 0), Step(0, 0), Step(1, 1)];

        Assert.Equal(steps, ParameterServer.ByHostInTurn(steps, ["h", "h"]));
    }
}
