namespace CheckpointEngine.Simulation.Models;

/// <summary>
/// A public model whose checkpoint the simulator can lay out without downloading it.
/// </summary>
/// <param name="PublishedParameters">The total its authors publish for the main model (MTP layers excluded where they say so).</param>
/// <param name="Source">Where the architecture and the published total come from.</param>
public sealed record ModelPreset(string Name, string Description, MoeArchitecture Architecture, double PublishedParameters, string Source)
{
    private readonly Lazy<ModelInventory> _inventory = new(() => InventoryBuilder.Build(Name, Architecture));

    /// <summary>Every tensor of the published checkpoint (built once, on first use).</summary>
    public ModelInventory Inventory => _inventory.Value;

    /// <summary>Parameters of the main model: the checkpoint without its multi-token-prediction layers.</summary>
    public long MainParameters => Inventory.CountParameters(name => !IsMtp(name));

    public bool IsMtp(string tensorName)
    {
        if (Architecture.MtpLayers == 0 || !tensorName.StartsWith("model.layers.", StringComparison.Ordinal))
        {
            return false;
        }
        var rest = tensorName.AsSpan("model.layers.".Length);
        var dot = rest.IndexOf('.');
        return dot > 0 && int.TryParse(rest[..dot], System.Globalization.CultureInfo.InvariantCulture, out var layer) && layer >= Architecture.Layers;
    }
}
