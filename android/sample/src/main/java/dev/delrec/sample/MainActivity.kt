package dev.delrec.sample

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.compose.foundation.clickable
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.material3.Button
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import androidx.lifecycle.compose.collectAsStateWithLifecycle
import androidx.lifecycle.viewmodel.compose.viewModel

/** One screen: the model loads once; tapping items grows a session's history and re-ranks it. */
class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) { RecommenderScreen() }
            }
        }
    }
}

@Composable
fun RecommenderScreen(vm: RecommenderViewModel = viewModel()) {
    // Collected only while the activity is started; the ViewModel's work does not depend on it.
    val state by vm.state.collectAsStateWithLifecycle()
    var newTitle by rememberSaveable { mutableStateOf("") }

    Column(Modifier.fillMaxSize().padding(16.dp), verticalArrangement = Arrangement.spacedBy(8.dp)) {
        Text(state.status, style = MaterialTheme.typography.titleMedium)
        state.loadProgress?.let { f -> LinearProgressIndicator(progress = { f }, modifier = Modifier.fillMaxWidth()) }
        state.error?.let { Text(it, color = MaterialTheme.colorScheme.error) }
        if (state.ready) {
            Text(
                "History: " + state.history.joinToString(" → ") { it.title }.ifEmpty { "tap an item below" },
                style = MaterialTheme.typography.bodyMedium,
            )
            Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
                Button(onClick = vm::rankWholeCatalog, enabled = state.history.isNotEmpty()) { Text("Rank catalog") }
                OutlinedButton(onClick = vm::cancelRanking, enabled = state.rankProgress != null) { Text("Cancel") }
            }
            state.rankProgress?.let { f -> LinearProgressIndicator(progress = { f }, modifier = Modifier.fillMaxWidth()) }
            state.rankInfo?.let { Text(it, style = MaterialTheme.typography.bodySmall) }
            Row(verticalAlignment = Alignment.CenterVertically, horizontalArrangement = Arrangement.spacedBy(8.dp)) {
                OutlinedTextField(
                    value = newTitle,
                    onValueChange = { newTitle = it },
                    label = { Text("New item title") },
                    singleLine = true,
                    modifier = Modifier.weight(1f),
                )
                Button(onClick = { vm.addItem(newTitle); newTitle = "" }, enabled = newTitle.isNotBlank()) { Text("Add") }
            }

            LazyColumn(Modifier.weight(1f)) {
                if (state.ranking.isNotEmpty()) {
                    item { Header("Recommended") }
                    items(state.ranking, key = { "r:" + it.id }) { item ->
                        ItemRow(item.title, "%.3f".format(item.score)) { vm.onItemTapped(Pick(item.id, item.title)) }
                    }
                }
                item { Header("Catalog (${state.catalogSize} items)") }
                items(state.catalog, key = { "c:" + it.id }) { pick ->
                    ItemRow(pick.title, null) { vm.onItemTapped(pick) }
                }
            }
        }
    }
}

@Composable
private fun Header(text: String) {
    Text(text, style = MaterialTheme.typography.titleSmall, modifier = Modifier.padding(top = 12.dp, bottom = 4.dp))
}

@Composable
private fun ItemRow(title: String, detail: String?, onClick: () -> Unit) {
    Row(Modifier.fillMaxWidth().clickable(onClick = onClick).padding(vertical = 10.dp)) {
        Text(title, Modifier.weight(1f))
        if (detail != null) Text(detail, style = MaterialTheme.typography.bodySmall)
    }
}
