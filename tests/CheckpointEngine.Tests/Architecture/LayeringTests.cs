using System.Reflection;

namespace CheckpointEngine.Tests.Architecture;

/// <summary>
/// The layering the project references promise, checked on the built assemblies: what each one
/// actually references at run time (a stray framework reference or a cycle would show up here).
/// </summary>
public sealed class LayeringTests
{
    private static readonly Assembly Worker = typeof(CheckpointEngine.Worker.WeightReceiver).Assembly;
    private static readonly Assembly Core = typeof(CheckpointEngine.Server.ParameterServer).Assembly;
    private static readonly Assembly Hosting = typeof(CheckpointEngine.Hosting.Api.ApiServer).Assembly;
    private static readonly Assembly Simulation = typeof(CheckpointEngine.Simulation.UpdateSimulator).Assembly;
    private static readonly Assembly ReferenceEngine = typeof(CheckpointEngine.ReferenceEngine.ReferenceWorker).Assembly;

    private static List<string> References(Assembly assembly) => [.. assembly.GetReferencedAssemblies().Select(a => a.Name!).Order(StringComparer.Ordinal)];

    private static bool IsBcl(string name) => name is "System" or "netstandard" || name.StartsWith("System.", StringComparison.Ordinal) || name.StartsWith("Microsoft.Win32.", StringComparison.Ordinal);

    [Fact]
    public void WorkerLibrary_ReferencesNothingButTheBaseLibrary()
    {
        var foreign = References(Worker).Where(n => !IsBcl(n) || n.StartsWith("System.CommandLine", StringComparison.Ordinal)).ToList();
        Assert.True(foreign.Count == 0, $"CheckpointEngine.Worker references {string.Join(", ", foreign)}");
    }

    [Fact]
    public void Core_ReferencesOnlyTheWorkerLibraryTheLoggingAbstractionsAndTheBaseLibrary()
    {
        var foreign = References(Core).Where(n => n != Worker.GetName().Name && n != "Microsoft.Extensions.Logging.Abstractions" && (!IsBcl(n) || n.StartsWith("System.CommandLine", StringComparison.Ordinal))).ToList();
        Assert.True(foreign.Count == 0, $"CheckpointEngine (core) references {string.Join(", ", foreign)}");
    }

    [Fact]
    public void HostingAndSimulation_StayBelowTheCli()
    {
        foreach (var assembly in new[] { Hosting, Simulation })
        {
            var names = References(assembly);
            Assert.DoesNotContain("ckpt-engine", names);
            Assert.DoesNotContain("System.CommandLine", names);
            Assert.Contains(Core.GetName().Name!, names);
        }
        Assert.DoesNotContain(Hosting.GetName().Name!, References(Simulation));
        Assert.DoesNotContain(Simulation.GetName().Name!, References(Hosting));
    }

    [Fact]
    public void ReferenceEngine_UsesTheWorkerLibraryLikeAnyEngine()
    {
        var names = References(ReferenceEngine);
        Assert.Contains(Worker.GetName().Name!, names);
        Assert.DoesNotContain(Core.GetName().Name!, names);
        Assert.DoesNotContain(Hosting.GetName().Name!, names);
    }
}
