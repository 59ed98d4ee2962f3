using System.Collections.Immutable;

namespace CheckpointEngine.Server;

/// <summary>How an update moves the buckets (see <see cref="ParameterServer.UpdateAsync"/>).</summary>
public enum UpdateMethod
{
    /// <summary>Every rank of the world takes part; each owner stages its own buckets and broadcasts them.</summary>
    Broadcast,

    /// <summary>
    /// Only the listed ranks take part (a new instance joining while the owners keep serving): receivers
    /// read buckets from the owners' registered host memory and broadcast them among the listed ranks.
    /// </summary>
    P2P,
}

/// <summary>An update's method and, for P2P, the ranks that take part.</summary>
public sealed record UpdateMode
{
    private UpdateMode(UpdateMethod method, ImmutableArray<int> ranks)
    {
        Method = method;
        Ranks = ranks;
    }

    public UpdateMethod Method { get; }

    /// <summary>The ranks of a P2P update, ascending; empty for broadcast (every rank).</summary>
    public ImmutableArray<int> Ranks { get; }

    public static UpdateMode Broadcast { get; } = new(UpdateMethod.Broadcast, []);

    /// <summary>A P2P update among <paramref name="ranks"/> (distinct ranks of the world, checked when it runs).</summary>
    public static UpdateMode P2P(IEnumerable<int> ranks) => new(UpdateMethod.P2P, [.. ranks.Order()]);

    /// <summary>"broadcast" or "p2p", as the CLI, the API and traces name it.</summary>
    public string Name => Method == UpdateMethod.P2P ? "p2p" : "broadcast";

    /// <summary>Whether <paramref name="rank"/> takes part.</summary>
    public bool Includes(int rank) => Method == UpdateMethod.Broadcast || Ranks.Contains(rank);

    public bool Equals(UpdateMode? other) => other is not null && Method == other.Method && Ranks.SequenceEqual(other.Ranks);

    public override int GetHashCode() => HashCode.Combine(Method, Ranks.Length);

    public override string ToString() => Method == UpdateMethod.P2P ? $"p2p among ranks [{string.Join(", ", Ranks)}]" : "broadcast";
}
