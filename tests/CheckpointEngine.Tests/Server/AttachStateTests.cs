using CheckpointEngine.Server;

namespace CheckpointEngine.Tests.Server;

/// <summary>What members say with the attach agreement: it round-trips, a peer's malformed state is refused naming it, and the digest of known declarations does not depend on their order.</summary>
public sealed class AttachStateTests
{
    private static readonly string X = new('a', 64), Y = new('b', 64);

    [Fact]
    public void Known_IsTheSameForTheSameDeclarations_InAnyOrder_AndCountsNothingDeclaredAsNone()
    {
        var a = AttachState.Of(null, [X, Y, ""]);
        var b = AttachState.Of(null, [Y, X, X]);
        var c = AttachState.Of(null, [X]);

        Assert.Equal(a.Known, b.Known);
        Assert.NotEqual(a.Known, c.Known);
        Assert.Equal((false, ""), (a.Maps, a.Digest)); // No worker (its attach failed): maps nothing, declares nothing.
    }

    [Theory]
    [InlineData(true, "")]
    [InlineData(false, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")]
    public void ToBytes_ParsesBack(bool maps, string digest)
    {
        var state = new AttachState(maps, digest, Y);

        Assert.Equal(state, AttachState.Parse(state.ToBytes(), 3));
    }

    [Theory]
    [InlineData("")]
    [InlineData("1|")]
    [InlineData("2||bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")]
    [InlineData("1|abc|bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")]
    [InlineData("1||BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB")]
    [InlineData("1||bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb|extra")]
    public void Parse_Malformed_FailsNamingTheRank(string text)
    {
        var e = Assert.Throws<UpdateFailedException>(() => AttachState.Parse(System.Text.Encoding.ASCII.GetBytes(text), 5));

        Assert.Equal($"rank 5 sent a malformed attach state ({text.Length} bytes)", e.Message);
    }
}
