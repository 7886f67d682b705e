// Plugin-library entry points: `trtexec --dynamicPlugins`, `polygraphy --plugins` and
// IPluginRegistry::loadLibrary look these up, so the library needs no symbol from libnvinfer.
#include "causalLinearAttentionPlugin/causalLinearAttentionPlugin.h"
#include "causalTSSAPlugin/causalTSSAPlugin.h"
#include "common/pluginCreator.h"
#include "tssaPlugin/tssaPlugin.h"

using namespace tost_edge::plugin;

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    tost_edge::plugin::setLoggerFinder(finder);
}

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static PluginCreator<TSSAPlugin> tssaCreator;
    static PluginCreator<CausalTSSAPlugin> causalCreator;
    static PluginCreator<CausalLinearAttentionPlugin> linearCreator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&tssaCreator, &causalCreator, &linearCreator};
    nbCreators = 3;
    return creators;
}
